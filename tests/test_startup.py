"""Start-up cost, measured by what gets imported (not by timing): `covseg --help` and argument errors import no
torch, and `import covseg_fast.ops` on a CPU-only run does not pull in the compiler stack (torch._inductor)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_after(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it sets ``out`` (a dict); return it plus which heavy modules loaded."""
    probe = (f"import sys\n{code}\n"
             "import json\n"
             "out.update({m: m in sys.modules for m in ('torch', 'torch._inductor', 'torch._dynamo')})\n"
             "print(json.dumps(out))\n")
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    full_env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=full_env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(argv: list[str]) -> str:
    return ("import contextlib, io\n"
            "from covseg_fast.cli.main import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
            "    try:\n"
            f"        code = main({argv!r})\n"
            "    except SystemExit as exc:\n"
            "        code = exc.code\n"
            "out = {'code': code, 'stderr': err.getvalue()}\n")


@pytest.mark.parametrize("argv", [["--help"], ["screen", "--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_imports_no_torch(argv):
    out = imported_after(run_cli(argv))
    assert out["code"] == 0
    assert not out["torch"], f"covseg {' '.join(argv)} imported torch"


@pytest.mark.parametrize("argv, message", [
    (["screen", "--bogus"], "unrecognized arguments"),
    (["screen", "x.nii.gz", "--backend", "tflite"], "invalid choice"),
    (["screen"], "no inputs"),
    (["screen", "x.nii.gz"], "--checkpoint is required"),
    (["screen", "x.nii.gz", "--checkpoint", "c.pt", "--batch-size", "0"], "--batch-size must be"),
    (["screen", "x.nii.gz", "--checkpoint", "c.pt", "--threads", "0"], "--threads must be"),
])
def test_argument_errors_import_no_torch(argv, message):
    out = imported_after(run_cli(argv))
    assert out["code"] == 2 and message in out["stderr"], out
    assert not out["torch"], f"covseg {' '.join(argv)} imported torch before answering"


def test_import_covseg_fast_is_light():
    out = imported_after("import covseg_fast\nout = {'version': covseg_fast.__version__}\n")
    assert out["version"] and not out["torch"]


def test_ops_import_does_not_load_the_compiler_stack_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the Triton ops scan their kernels (torch._inductor) as they should")
    out = imported_after("import torch, covseg_fast\n"
                         "n = len(covseg_fast.ops.__all__)\n"
                         "out = {'strip_conv': hasattr(torch.ops.covseg, 'strip_conv'), 'n': n}\n")
    assert out["strip_conv"] and out["torch"]
    assert not out["torch._inductor"], "registering the covseg ops imported torch._inductor on a CPU-only run"
    # forcing the scan still works (and is what a CUDA machine does)
    forced = imported_after("import covseg_fast.ops\nout = {}\n", env={"COVSEG_TRITON_SCAN": "1"})
    assert forced["torch._inductor"]
