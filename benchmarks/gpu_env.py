"""The environment of a GPU check, as JSON: device, driver-side versions, Python packages, the commit.

    python3 benchmarks/gpu_env.py --json env.json

Reads what torch reports (device name, capability, multiprocessors, memory, CUDA, cuDNN), Triton's
version and the versions of the packages the check needs (pytest plugins, the carried wheels).
The commit is ``COVSEG_GIT_COMMIT`` (a copy of the tree without ``.git``), else ``git rev-parse``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata

PACKAGES = ("torch", "triton", "numpy", "pytest", "pytest-xdist", "pytest-timeout", "pytest-benchmark",
            "hypothesis", "nibabel", "pydicom", "pysodmetrics", "onnx", "onnxruntime", "onnxscript", "setuptools")


def commit() -> str:
    if os.environ.get("COVSEG_GIT_COMMIT"):
        return os.environ["COVSEG_GIT_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "-C", here, "rev-parse", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": commit(), "python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "packages": {name: _version(name) for name in PACKAGES},
           "tools": {tool: shutil.which(tool) for tool in ("nvidia-smi", "nvcc", "compute-sanitizer", "ncu")}}
    env["triton"] = env["packages"]["triton"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, memory_bytes=props.total_memory,
                   l2_bytes=getattr(props, "L2_cache_size", None), device_count=torch.cuda.device_count())
    else:
        env.update(device="cpu", capability=None)
    free = shutil.disk_usage(os.getcwd())
    env["disk_free_bytes"] = free.free
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    env = environment()
    with open(args.json, "w") as fh:
        json.dump(env, fh, indent=1)
    print(json.dumps({k: env[k] for k in ("device", "capability", "torch", "cuda", "triton", "python", "commit")}))
    missing = [name for name in ("pytest-xdist", "pytest-timeout", "pytest-benchmark", "nibabel")
               if env["packages"][name] is None]
    if missing:
        print("missing packages the check needs: " + ", ".join(missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
