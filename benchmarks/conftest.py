"""Shared pytest-benchmark machinery: environment record, peak memory, result checks.

Run: ``python -m pytest benchmarks/ops/bench_class_prob_pool.py --benchmark-json benchmarks/results/<name>.json``
(benchmark files are named bench_*.py; pass the path explicitly).
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


def pytest_collect_file(parent, file_path):
    # `pytest benchmarks/` would skip bench_*.py (not test_*.py): collect them. Files named on the
    # command line are collected by pytest itself, so adding them here would run them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def git_commit() -> str:
    # a copy of the tree without .git (e.g. a rented GPU machine) gets the commit from the caller
    if os.environ.get("COVSEG_GIT_COMMIT"):
        return os.environ["COVSEG_GIT_COMMIT"]
    try:
        here = os.path.dirname(__file__)
        commit = subprocess.check_output(["git", "-C", here, "rev-parse", "HEAD"], text=True).strip()
        dirty = subprocess.call(["git", "-C", here, "diff", "--quiet", "HEAD"]) != 0
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def environment() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["covseg"] = environment()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def record(benchmark):
    """record(provider=..., shape=..., mode=..., **more) stores labels in extra_info with the environment."""

    def _record(**info):
        benchmark.extra_info.update(environment())
        benchmark.extra_info.update(info)

    return _record


def measure_peak_memory(fn, device: str) -> int | None:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before (CUDA only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
