"""`covseg info` tells the truth about the build and every op's backend; import never fails."""
import json
import os
import subprocess
import sys

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


def test_cli_without_command_is_a_usage_error(capsys):
    assert cli_main([]) == 2
