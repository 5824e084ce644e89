"""setup.py resolves the build as README says, and the built library really runs in parallel.

setup.py only calls setup() when run as a script, so its functions are imported here
without building anything or touching covseg_fast/_build_config.json.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

from covseg_fast import _ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REBUILD = "rebuild it: OMP_NUM_THREADS=1 python setup.py build_ext --inplace"


@pytest.fixture
def setup_py(monkeypatch):
    for name in ("COVSEG_NO_EXT", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("covseg_setup", os.path.join(REPO, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pure_python_install_builds_nothing(setup_py, monkeypatch):
    monkeypatch.setenv("COVSEG_NO_EXT", "1")
    monkeypatch.setenv("FORCE_CUDA", "1")  # COVSEG_NO_EXT wins
    config = setup_py.resolve_config()
    assert config["no_ext"] is True and config["cuda"] is False
    assert setup_py.extensions(config) == ([], {})


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch here has CUDA; the error is for a CPU-only torch")
def test_force_cuda_with_cpu_torch_names_the_problem_and_the_fix(setup_py, monkeypatch):
    monkeypatch.setenv("FORCE_CUDA", "1")
    with pytest.raises(SystemExit, match="FORCE_CUDA=1 needs a CUDA build of torch") as info:
        setup_py.resolve_config()
    assert "unset FORCE_CUDA" in str(info.value) and "download.pytorch.org" in str(info.value)


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch here has CUDA, so the default build includes CUDA")
def test_default_build_on_cpu_torch_is_cpu_only_with_openmp(setup_py):
    config = setup_py.resolve_config()
    assert config["cuda"] is False and config["cuda_arch_list"] is None
    (ext,), cmdclass = setup_py.extensions(config)
    assert all(source.endswith(".cpp") for source in ext.sources) and "build_ext" in cmdclass
    flags = config["openmp_flags"]
    if sys.platform != "win32" and shutil.which(os.environ.get("CXX") or "c++"):
        assert flags == ["-fopenmp"], config["openmp"]  # gcc and clang with libomp accept it
    for flag in flags:
        assert flag in ext.extra_compile_args["cxx"] and flag in ext.extra_link_args


def _omp_build_or_skip() -> None:
    if not _ext.loaded:
        pytest.skip(f"the extension is not built: {_ext.reason}")
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch does not use OpenMP for at::parallel_for")
    config = _ext.build_config()
    if config.get("openmp_flags") == []:
        pytest.skip(f"built without OpenMP: {config.get('openmp')}")


def _dynamic_symbols(path: str) -> str:
    nm = shutil.which("nm")
    if nm:
        return subprocess.run([nm, "-D", path], capture_output=True, text=True, check=True).stdout
    with open(path, "rb") as fh:  # the names of imported symbols are plain strings in .dynstr
        return fh.read().decode("latin-1")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks an ELF shared library")
def test_extension_is_linked_with_openmp():
    # Without -fopenmp ATen's header-inline OpenMP backend compiles out and
    # at::parallel_for runs the whole range on the calling thread.
    _omp_build_or_skip()
    uses_openmp = "GOMP_parallel" in _dynamic_symbols(_ext.library_path)
    assert uses_openmp, f"{_ext.library_path} calls no OpenMP runtime, so at::parallel_for runs serially; {REBUILD}"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_cpp_kernel_starts_a_second_thread():
    # A fresh process has no OpenMP team yet; the C++ kernel's parallel_for must start one.
    _omp_build_or_skip()
    code = (
        "import os, torch, covseg_fast\n"
        "from covseg_fast.ops import class_prob_pool, use_backend\n"
        "torch.set_num_threads(2)\n"
        "labels = torch.zeros(4, 64, 64, dtype=torch.uint8)\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "with use_backend('cpp'):\n"
        "    class_prob_pool(labels, 2, [2, 4])\n"
        "print(before, len(os.listdir('/proc/self/task')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = map(int, result.stdout.split())
    assert after > before, f"class_prob_pool ran on one thread ({before} → {after} threads); {REBUILD}"
