"""``python -m covseg_fast.info`` / ``covseg info``: versions, build, and which backend serves each op.

For every op and for CPU and CUDA, the first available backend is the one that
serves; every other backend is listed with the reason it does not.
"""
from __future__ import annotations

import json
import platform
import sys

import torch

from . import __version__, _ext
from .ops import REGISTRY, forced_backend
from .ops import triton as triton_backend


def versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:
        triton_version = f"unavailable ({exc})"
    return {
        "covseg_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "triton": triton_version,
    }


def backend_table() -> dict:
    """{op: {device: {"serves": name, "others": {name: reason}}}}."""
    table: dict = {}
    for op_name, entry in sorted(REGISTRY.items()):
        table[op_name] = {}
        for device in ("cpu", "cuda"):
            rows = entry.describe(device)
            serves = next(name for name, reason in rows if reason is None)
            others = {name: reason for name, reason in rows if name != serves}
            if forced_backend():
                serves = f"{serves} (but COVSEG_BACKEND={forced_backend()} is forced)"
            table[op_name][device] = {"serves": serves, "others": {k: v or "lower priority" for k, v in others.items()}}
    return table


KERNEL_KEYS = ("CPU", "CUDA")


def extension_kernels() -> dict:
    """{op: [dispatch keys with a kernel]} for every op the compiled library defines (``covseg_ext::*``).

    What is registered, not what the build configuration says: a library built without its CUDA sources
    lists no "CUDA" here, and the CUDA tests of its ops would skip.
    """
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("covseg_ext::"))
    return {n: [k for k in KERNEL_KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)] for n in names}


def report() -> dict:
    return {
        "versions": versions(),
        "build": _ext.build_config() or {"note": "no build configuration recorded"},
        "extension": {"loaded": _ext.loaded, "path": _ext.library_path, "reason": _ext.reason,
                      "kernels": extension_kernels()},
        "triton": {"import_error": triton_backend.import_error, "interpreter": triton_backend.interpreting()},
        "forced_backend": forced_backend(),
        "ops": backend_table(),
    }


def format_report(info: dict) -> str:
    lines = ["covseg_fast " + info["versions"]["covseg_fast"]]
    lines += [f"  {k}: {v}" for k, v in info["versions"].items() if k != "covseg_fast"]
    ext = info["extension"]
    lines.append(f"extension covseg_fast._C: {'loaded from ' + ext['path'] if ext['loaded'] else 'not loaded: ' + ext['reason']}")
    for op_name, keys in ext["kernels"].items():
        lines.append(f"  {op_name}: kernels for {', '.join(keys) or 'no device'}")
    build = info["build"]
    lines.append("build: " + ", ".join(f"{k}={v}" for k, v in build.items()))
    if info["forced_backend"]:
        lines.append(f"COVSEG_BACKEND={info['forced_backend']} forces that backend for every op")
    lines.append("ops (backend serving each device; why the others do not):")
    for op_name, devices in info["ops"].items():
        lines.append(f"  covseg::{op_name}")
        for device, row in devices.items():
            lines.append(f"    {device:<4} -> {row['serves']}")
            for name, reason in row["others"].items():
                lines.append(f"           {name}: {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    info = report()
    print(json.dumps(info, indent=1, default=str) if "--json" in argv else format_report(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
