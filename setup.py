"""Builds covseg_fast._C from csrc/ (see README "Installing and building").

- C++ CPU sources (csrc/ops/*.cpp) always, with OpenMP when the compiler supports it
  (without it ATen's at::parallel_for runs serially);
- CUDA sources (csrc/ops/cuda/*.cu) when torch has CUDA and nvcc is found;
  FORCE_CUDA=1 makes them required: the build stops with a clear error instead of
  building CPU kernels only;
- COVSEG_NO_EXT=1: pure-Python install, the PyTorch references serve;
- TORCH_CUDA_ARCH_LIST is honoured by torch.utils.cpp_extension (never set here).
The resolved configuration is printed and written to covseg_fast/_build_config.json.
The functions are importable (tests/test_build.py) without running setup().
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildConfigError(SystemExit):
    """A build that cannot do what was asked; the message names the fix."""


def openmp_flags() -> tuple[list[str], str]:
    """(flags, note): the OpenMP flag for compile and link if the C++ compiler accepts it."""
    if sys.platform == "win32":
        return ["/openmp"], "MSVC /openmp"
    compiler = os.environ.get("CXX") or "c++"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as fh:
            fh.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            result = subprocess.run([compiler, "-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                                    capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            return [], f"{compiler} not runnable ({exc}); at::parallel_for will run serially"
    if result.returncode != 0:
        return [], f"{compiler} rejects -fopenmp; at::parallel_for will run serially"
    return ["-fopenmp"], f"{compiler} -fopenmp"


def resolve_config() -> dict:
    config = {"no_ext": os.environ.get("COVSEG_NO_EXT") == "1", "cuda": False}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        config.update(no_ext=True, reason="torch is not importable at build time (use --no-build-isolation)")
        return config
    config["torch"] = torch.__version__
    config["torch_cuda"] = torch.version.cuda
    nvcc = shutil.which("nvcc") or (
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
    )
    config["nvcc"] = nvcc
    force = os.environ.get("FORCE_CUDA") == "1"
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    config["force_cuda"] = force
    config["cuda_arch_list"] = arch_list
    if config["no_ext"]:
        return config
    if force and torch.version.cuda is None:
        # torch.utils.cpp_extension sets CUDA_HOME to None for a CPU torch, so the
        # build would die later with a bare "OSError: CUDA_HOME ... not set".
        raise BuildConfigError(
            f"covseg_fast: FORCE_CUDA=1 needs a CUDA build of torch, but torch {torch.__version__} is CPU-only "
            "(torch.version.cuda is None) and cannot compile CUDA extensions. Install a CUDA torch wheel "
            "(e.g. pip install torch --index-url https://download.pytorch.org/whl/cu128), or unset FORCE_CUDA "
            "to build the C++ CPU kernels only."
        )
    if force and nvcc is None:
        raise BuildConfigError(
            "covseg_fast: FORCE_CUDA=1 but nvcc was not found: put the CUDA toolkit's bin/ on PATH or set "
            "CUDA_HOME, or unset FORCE_CUDA to build the C++ CPU kernels only."
        )
    config["cuda"] = torch.version.cuda is not None and nvcc is not None
    if config["cuda"] and not arch_list and torch.cuda.device_count() == 0:
        # torch would otherwise fail with an IndexError while picking architectures.
        raise BuildConfigError(
            "covseg_fast: building the CUDA kernels on a machine without a visible GPU needs "
            'TORCH_CUDA_ARCH_LIST (e.g. TORCH_CUDA_ARCH_LIST="9.0" for H100), or COVSEG_NO_EXT=1 to skip compiling.'
        )
    flags, config["openmp"] = openmp_flags()
    config["openmp_flags"] = flags
    return config


def extensions(config: dict):
    if config["no_ext"]:
        return [], {}
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join("csrc", "ops", "*.cpp")))
    omp = config.get("openmp_flags", [])
    cxx = ["-O3", "-std=c++17", *omp]
    # MSVC links OpenMP from the compile flag alone.
    link = [f for f in omp if f != "/openmp"]
    if config["cuda"]:
        sources += sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
        ext = cpp_extension.CUDAExtension(
            "covseg_fast._C", sources, extra_link_args=link,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
        )
    else:
        ext = cpp_extension.CppExtension("covseg_fast._C", sources, extra_compile_args={"cxx": cxx},
                                         extra_link_args=link)
    # The library registers ops through TORCH_LIBRARY and is loaded with
    # torch.ops.load_library, so it needs no Python module init.
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


if __name__ == "__main__":  # also how setuptools.build_meta (pip) runs this file
    config = resolve_config()
    print("covseg_fast build configuration:", json.dumps(config, indent=1))
    with open(os.path.join(HERE, "covseg_fast", "_build_config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    ext_modules, cmdclass = extensions(config)
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
