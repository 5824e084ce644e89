"""Shared pytest-benchmark machinery: environment record, peak memory, result checks.

Run: ``python -m pytest benchmarks/ops/bench_class_prob_pool.py --benchmark-json benchmarks/results/<name>.json``
(benchmark files are named bench_*.py; pass the path explicitly).

Cases that run on the CPU whatever the machine (CPU shapes, the C++ CPU kernel) carry the ``cpu_case``
marker: ``-m "not cpu_case"`` leaves them out on a GPU machine (benchmarks/gpu_check.sh does).
``COVSEG_BENCH_ROUNDS=N`` overrides every suite's timed rounds (e.g. 1 to warm caches quickly).
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


CPU_CASE = "cpu_case"  # registered in pyproject.toml


def params(names, cpu: set) -> list:
    """Parametrize values for ``names``; those in ``cpu`` run on the CPU whatever the machine (marked)."""
    mark = getattr(pytest.mark, CPU_CASE)
    return [pytest.param(n, marks=mark, id=str(n)) if n in cpu else n for n in names]


def bench_rounds(default: int) -> int:
    """Timed rounds: ``default``, or ``COVSEG_BENCH_ROUNDS`` when set (a positive integer)."""
    value = os.environ.get("COVSEG_BENCH_ROUNDS")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"COVSEG_BENCH_ROUNDS must be a positive integer, got {value!r}")
    return int(value)


def pytest_collection_modifyitems(config, items):
    """Case-major order: the providers of one case (same shape, mode, ...) run one after another, in their
    listed order, so a run stopped at a time limit leaves whole groups to compare. Files keep their order."""
    here = os.path.dirname(os.path.abspath(__file__))
    first: dict = {}
    keys = []
    for index, item in enumerate(items):
        callspec = getattr(item, "callspec", None)
        if str(item.path).startswith(here) and callspec is not None and "provider" in callspec.params:
            rest = tuple(sorted((k, str(v)) for k, v in callspec.params.items() if k != "provider"))
            group = (str(item.path), item.originalname, rest)
        else:
            group = index
        keys.append((first.setdefault(group, index), index))
    items[:] = [item for _, item in sorted(zip(keys, items), key=lambda pair: pair[0])]


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
