"""Is the library just built the one the GPU tests need? Fails loudly when its CUDA kernels are missing.

    python3 benchmarks/gpu_build_check.py --expect-cuda --json build_check.json

A build without its CUDA sources loads fine, its CUDA tests skip at collection and the run looks green.
So this checks, in order: the build configuration setup.py recorded (``cuda``, ``force_cuda``, the arch
list), that ``covseg_fast._C`` loaded, that ``covseg_ext::class_prob_pool`` has a CUDA kernel registered
with the dispatcher, that the kernel runs and matches the reference bit for bit, and which backend serves
each op on CUDA (every op should be served by ``cuda`` or ``triton``, none by ``reference``).
Without ``--expect-cuda`` (a CPU dry run) it reports the same findings and exits 0 when the library loads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from covseg_fast import _ext  # noqa: E402
from covseg_fast.info import extension_kernels, report  # noqa: E402
from covseg_fast.ops import class_prob_pool, use_backend  # noqa: E402

CUDA_OP = "covseg_ext::class_prob_pool"


def _kernel_matches_reference() -> str | None:
    """None if the CUDA kernel reproduces the reference on a random odd-sized label map, else why not."""
    labels = torch.randint(0, 3, (2, 37, 53), generator=torch.Generator().manual_seed(0))
    with use_backend("reference"):
        want = class_prob_pool(labels, 3, [2, 4, 8])
    with use_backend("cuda"):
        got = class_prob_pool(labels.cuda(), 3, [2, 4, 8])
    torch.cuda.synchronize()
    for s, g, w in zip([2, 4, 8], got, want):
        if not torch.equal(g.cpu(), w):
            return f"scale {s}: the CUDA kernel differs from the reference (max error {(g.cpu() - w).abs().max():.3g})"
    return None


def check() -> dict:
    info = report()
    build = info["build"]
    problems = []
    if not build.get("cuda"):
        problems.append(f"the build configuration says cuda={build.get('cuda')} (force_cuda={build.get('force_cuda')}, "
                        f"nvcc={build.get('nvcc')}, torch_cuda={build.get('torch_cuda')}): the CUDA sources were "
                        "not compiled; build with FORCE_CUDA=1")
    if not _ext.loaded:
        problems.append(f"covseg_fast._C did not load: {_ext.reason}")
    kernels = extension_kernels()
    if "CUDA" not in kernels.get(CUDA_OP, []):
        problems.append(f"{CUDA_OP} has no CUDA kernel registered (registered: {kernels.get(CUDA_OP, 'op missing')})")
    if not torch.cuda.is_available():
        problems.append("torch sees no CUDA device")
    elif not problems:
        mismatch = _kernel_matches_reference()
        if mismatch:
            problems.append(mismatch)
    served_by_reference = sorted(op for op, row in info["ops"].items() if row["cuda"]["serves"].startswith("reference"))
    if served_by_reference:
        reasons = sorted({r for op in served_by_reference for r in info["ops"][op]["cuda"]["others"].values()})
        problems.append(f"on CUDA the reference serves {len(served_by_reference)} op(s): "
                        f"{', '.join(served_by_reference)} (because: {'; '.join(reasons)})")
    return {"ok": not problems, "problems": problems, "build": build, "kernels": kernels,
            "cuda_serves": {op: row["cuda"]["serves"] for op, row in info["ops"].items()},
            "versions": info["versions"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect-cuda", action="store_true", help="exit 1 unless every check passes")
    parser.add_argument("--json", help="write the findings here")
    args = parser.parse_args(argv)
    result = check()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    print("kernels registered by covseg_fast._C: " + json.dumps(result["kernels"]))
    if result["ok"]:
        print("build check: the CUDA kernels are built, registered and match the reference")
        return 0
    banner = "BUILD CHECK FAILED: THE LIBRARY LACKS ITS CUDA KERNELS OR A GPU BACKEND" if args.expect_cuda else \
        "build check (dry run, no GPU expected): on the device these would fail the check"
    print(banner)
    for problem in result["problems"]:
        print(f"  - {problem}")
    if args.expect_cuda:
        return 1
    return 0 if _ext.loaded else 1


if __name__ == "__main__":
    sys.exit(main())
