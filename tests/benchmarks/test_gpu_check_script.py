"""benchmarks/gpu_check.sh on CPU: per-step caps, the whole budget, a failed step not stopping the rest, what
comes back in $OUT (at most 8 files, two folders deep), and the benchmark selection the device would run.
The full dry run (every step) is a CI stage (.ci/run), not repeated here."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def run(tmp_path, *args, timeout=600, **env):
    out, work = tmp_path / "out", tmp_path / "work"
    full_env = {**os.environ, "OUT": str(out), "CHECK_WORK": str(work), "CHECK_SITE": str(tmp_path / "site"), **env}
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=full_env,
                            timeout=timeout)
    return result, out


def steps_of(out: Path) -> dict:
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        text = tar.extractfile("./steps.tsv").read().decode()
    return {line.split("\t")[0]: line.split("\t") for line in text.splitlines()}


def test_usage_errors_and_help(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    result, _ = run(tmp_path, "--nonsense")
    assert result.returncode == 2 and "unknown argument" in result.stderr
    result, _ = run(tmp_path, "--dry-run", CHECK_STEPS="env,nosuch")
    assert result.returncode == 2 and "unknown step 'nosuch'" in result.stderr
    result, _ = run(tmp_path, "--help")
    assert result.returncode == 0 and "CHECK_STEPS" in result.stdout and "bench-ops" in result.stdout


def test_a_step_over_its_cap_is_stopped_and_the_next_steps_still_run(tmp_path):
    result, out = run(tmp_path, "--dry-run", CHECK_STEPS="env,info,ceilings", CHECK_CAP_env="1")
    assert result.returncode == 1, result.stdout[-2000:]  # a step was not ok
    steps = steps_of(out)
    assert steps["env"][1].startswith("TIMED OUT") and steps["env"][2] == "124"
    assert steps["info"][1] == "ok" and steps["ceilings"][1] == "ok"
    assert steps["total"][1] == "1 step(s) not ok"
    summary = (out / "summary.txt").read_text()
    for name in ("env", "info", "ceilings", "total"):
        assert f"\n{name} " in summary
    # what comes back: at most 8 files, none deeper than two folders
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["gpu_check.tar.gz", "summary.txt"]
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = tar.getnames()
    assert "./logs/info.log" in names and "./ceilings.json" in names and "./meta.json" in names
    ceilings = json.loads(tarfile.open(out / "gpu_check.tar.gz").extractfile("./ceilings.json").read())
    assert ceilings["copy"]["bytes_per_s"] > 0 and ceilings["matmul"]["flops_per_s"] > 0


def test_steps_that_cannot_get_their_floor_are_skipped_not_started(tmp_path):
    result, out = run(tmp_path, "--dry-run", CHECK_STEPS="info,ceilings", CHECK_BUDGET_S="12")
    steps = steps_of(out)
    # info (floor 5) must leave ceilings' floor (10) and packing (5): 12 - 15 < 5, skipped; ceilings: 12 - 5 < 10
    assert steps["info"][1].startswith("skipped: budget") and steps["ceilings"][1].startswith("skipped: budget")
    assert result.returncode == 1


def test_the_device_selection_is_the_planned_one():
    """42 op cases and 4 training steps, no CPU case among them; every fused op case has eager and compile."""
    script = SCRIPT.read_text()
    ops_k = script.split('OPS_K=${CHECK_OPS_K:-"', 1)[1].split('"}', 1)[0]
    train_k = script.split('TRAIN_K=${CHECK_TRAIN_K:-"', 1)[1].split('"}', 1)[0]
    files = script.split('OPS_FILES="', 1)[1].split('"', 1)[0].split()

    def collect(paths, k):
        result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                 "-m", "not cpu_case", "-k", k, *paths], capture_output=True, text=True, cwd=REPO,
                                timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return [line for line in result.stdout.splitlines() if "::" in line]

    ops = collect(files, ops_k)
    assert len(ops) == 42
    assert not any("cpu_tiny" in i or "tiny_cpu" in i or "[cpp-" in i for i in ops)
    fused = [i for i in ops if any(f"[{p}-" in i or f"-{p}-" in i for p in ("cuda", "triton", "fused"))]
    for case in fused:
        if "f2_128" in case:  # eager and compile would need 52 GB of N×N tensors: the fused op alone
            continue
        for baseline in ("eager", "compile"):
            sibling = case
            for p in ("cuda", "triton", "fused"):
                sibling = sibling.replace(f"[{p}-", f"[{baseline}-").replace(f"-{p}-", f"-{baseline}-")
            assert sibling in ops, f"{case}: no {baseline} case in the same run"
    train = collect(script.split('TRAIN_FILES="', 1)[1].split('"', 1)[0].split(), train_k)
    assert len(train) == 4 and all("channels_last" in i for i in train)


@pytest.mark.parametrize("text", ["python ", "covseg info", "set -e"])
def test_the_script_uses_python3_and_no_set_e(text):
    body = "\n".join(line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert text not in body
