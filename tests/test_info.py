"""`covseg info` tells the truth about the build and every op's backend; import never fails."""
import json
import os
import subprocess
import sys

import pytest

import covseg_fast
from covseg_fast import _ext
from covseg_fast.cli.main import main as cli_main
from covseg_fast.info import report
from covseg_fast.ops import REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=120)


def test_report_lists_every_op_with_a_serving_backend_per_device():
    info = report()
    assert set(info["ops"]) == set(REGISTRY)
    for op_name, devices in info["ops"].items():
        for device in ("cpu", "cuda"):
            row = devices[device]
            served = row["serves"].split()[0]
            assert served in {b.name for b in REGISTRY[op_name].backends}
            # the backend said to serve really is the one selection picks
            assert REGISTRY[op_name].describe(device)[[n for n, _ in REGISTRY[op_name].describe(device)].index(served)][1] is None
            assert all(reason for reason in row["others"].values())


def test_cpu_backend_of_class_prob_pool_matches_extension_state():
    served = report()["ops"]["class_prob_pool"]["cpu"]["serves"]
    assert served == ("cpp" if _ext.loaded else "reference")


def test_report_lists_the_kernels_the_library_registers():
    kernels = report()["extension"]["kernels"]
    if not _ext.loaded:
        assert kernels == {}
        return
    keys = kernels["covseg_ext::class_prob_pool"]
    assert "CPU" in keys
    # a CUDA kernel is listed exactly when the build compiled the CUDA sources (what gpu_check.sh asserts)
    assert ("CUDA" in keys) == bool(_ext.build_config().get("cuda"))


def test_cli_info_json(capsys):
    assert cli_main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["covseg_fast"] == covseg_fast.__version__
    assert info["extension"]["loaded"] == _ext.loaded


def test_import_without_extension_warns_once_and_reference_serves():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import covseg_fast, covseg_fast.ops\n"
        "    import covseg_fast._ext\n"
        "msgs = [str(x.message) for x in w if 'covseg_fast' in str(x.message)]\n"
        "print(len(msgs), msgs[0] if msgs else '')\n"
        "from covseg_fast.info import report\n"
        "print(report()['ops']['class_prob_pool']['cpu']['serves'])\n"
        "import torch\n"
        "print(covseg_fast.ops.class_prob_pool(torch.zeros(1, 4, 4, dtype=torch.long), 2, [2])[0].sum().item())\n"
    )
    result = run_python(code, COVSEG_DISABLE_EXT="1")
    assert result.returncode == 0, result.stderr
    count, _, rest = result.stdout.partition(" ")
    assert count == "1" and "disabled by COVSEG_DISABLE_EXT=1" in rest
    lines = result.stdout.strip().splitlines()
    assert lines[1] == "reference" and lines[2] == "4.0"


def test_module_entry_point_prints_backends():
    result = subprocess.run([sys.executable, "-m", "covseg_fast.info"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "covseg::class_prob_pool" in result.stdout and "cpu  ->" in result.stdout


def test_python_dash_m_package_is_the_covseg_command():
    result = subprocess.run([sys.executable, "-m", "covseg_fast", "info", "--json"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "class_prob_pool" in json.loads(result.stdout)["ops"]
    bad = subprocess.run([sys.executable, "-m", "covseg_fast", "nosuch"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert bad.returncode == 2


def test_cli_without_command_is_a_usage_error(capsys):
    assert cli_main([]) == 2


TRITON_BLOCKER = (
    "import sys\n"
    "class _NoTriton:\n"  # behaves as if triton were not installed
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'triton' or name.startswith('triton.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, _NoTriton())\n"
    "for name in [m for m in sys.modules if m == 'triton' or m.startswith('triton.')]:\n"
    "    del sys.modules[name]\n"
)


def test_import_without_triton_warns_once_and_info_works():
    code = TRITON_BLOCKER + (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import covseg_fast, covseg_fast.ops, covseg_fast.nn, covseg_fast.models\n"
        "    import covseg_fast.ops.triton\n"
        "msgs = [str(x.message) for x in w if 'covseg_fast' in str(x.message) and 'Triton' in str(x.message)]\n"
        "print('WARNINGS', len(msgs), msgs[0] if msgs else '')\n"
        "from covseg_fast.cli.main import main\n"
        "print('RC', main(['info']))\n"
        "import torch\n"
        "from covseg_fast.ops import strip_conv\n"
        "x = torch.randn(1, 2, 6, 6)\n"
        "out = strip_conv(x, torch.randn(2, 1, 5, 5), torch.zeros(2), [torch.randn(2, 1, 1, 3)], [torch.zeros(2)],\n"
        "                 [torch.randn(2, 1, 3, 1)], [torch.zeros(2)])\n"
        "print('STRIP', tuple(out.shape))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    warned = next(line for line in lines if line.startswith("WARNINGS"))
    assert warned.startswith("WARNINGS 1 ") and "No module named 'triton'" in warned, warned
    assert "RC 0" in lines and "STRIP (1, 2, 6, 6)" in lines
    # covseg info names the reason for every Triton op, and they fall back to the reference
    assert "triton: triton not importable: ModuleNotFoundError" in result.stdout
    strip_rows = result.stdout.split("covseg::strip_conv", 1)[1].splitlines()
    assert strip_rows[1].strip() == "cpu  -> reference"
    # torch's own "Triton not available" log (one line per triton_op) is folded into the one warning
    assert "Triton not available" not in result.stderr


def test_no_triton_warning_when_triton_imports():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import covseg_fast.ops.triton as t\n"
        "print(t.import_error is None, sum('Triton' in str(x.message) for x in w))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    importable, count = result.stdout.split()
    if importable != "True":
        pytest.skip("triton is not importable here")
    assert count == "0"  # no GPU is not a reason to warn
