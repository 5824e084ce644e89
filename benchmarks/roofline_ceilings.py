"""The two ceilings of a roofline, measured on this device in this call (METHOD.md: datasheets are leads).

    python3 benchmarks/roofline_ceilings.py --json ceilings.json [--device cuda|cpu]

- copy bandwidth: a large device-to-device copy, bytes read plus bytes written over the median time;
- bf16 matrix rate: an n×n×n bf16 product on random data (fp32 on CPU), 2n³ over the median time;
- fp32 FMA rate (CUDA only): a Triton kernel of independent fused multiply-adds in registers, the ceiling of
  code that accumulates on the FP32 cores (the depthwise strip convolutions).
CUDA times are CUDA-event medians after warm-ups; CPU times are wall-clock medians (a CPU run only proves
the script and gives CPU ceilings). The JSON says what was run, so a fraction of the floor can be traced.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

try:  # the FMA ceiling only; the copy and matmul ceilings need no Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit
    def _fma_kernel(out_ptr, a, b, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x0 = offs.to(tl.float32) * 1e-7
        x1, x2, x3 = x0 + 1.0, x0 + 2.0, x0 + 3.0  # four independent chains hide the FMA latency
        for _ in range(ITERS):
            x0 = x0 * a + b
            x1 = x1 * a + b
            x2 = x2 * a + b
            x3 = x3 * a + b
        tl.store(out_ptr + offs, x0 + x1 + x2 + x3)


def _median_seconds(fn, device: str, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int, repeat: int) -> dict:
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), device, warmup=3, repeat=repeat)
    assert torch.equal(dst[:4096], src[:4096]), "copy wrote wrong bytes"
    return {"what": "dst.copy_(src), uint8", "bytes_each_way": nbytes, "median_s": seconds,
            "bytes_per_s": 2 * nbytes / seconds, "repeat": repeat}


def matmul_rate(device: str, n: int, dtype: torch.dtype, repeat: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: torch.mm(a, b, out=out), device, warmup=3, repeat=repeat)
    assert torch.isfinite(out).all(), "matrix product gave non-finite values"
    return {"what": f"torch.mm {n}x{n}x{n} {dtype}, random data", "n": n, "dtype": str(dtype),
            "median_s": seconds, "flops_per_s": 2 * n ** 3 / seconds, "repeat": repeat}


def fp32_fma_rate(repeat: int, device: str = "cuda", programs: int | None = None, iters: int = 2048) -> dict:
    if triton is None:
        raise RuntimeError("triton is not importable")
    block = 1024
    programs = programs or torch.cuda.get_device_properties(0).multi_processor_count * 16
    out = torch.empty(programs * block, device=device)
    seconds = _median_seconds(lambda: _fma_kernel[(programs,)](out, 0.999, 1e-4, ITERS=iters, BLOCK=block),
                              device, warmup=2, repeat=repeat)
    assert torch.isfinite(out).all(), "FMA kernel gave non-finite values"
    flops = 2 * 4 * iters * programs * block
    return {"what": f"Triton, {programs} programs x {block} lanes x 4 chains x {iters} fp32 FMAs",
            "median_s": seconds, "flops_per_s": flops / seconds, "repeat": repeat}


def measure(device: str) -> dict:
    cuda = device == "cuda"
    result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # CUDA: 2 GiB each way (far past the L2) and the 8192³ product the device notes use; CPU: small and quick
    result["copy"] = copy_bandwidth(device, 2 << 30 if cuda else 64 << 20, repeat=20 if cuda else 5)
    result["matmul"] = (matmul_rate(device, 8192, torch.bfloat16, repeat=10) if cuda
                        else matmul_rate(device, 512, torch.float32, repeat=5))
    if cuda:
        try:
            result["fp32_fma"] = fp32_fma_rate(repeat=10)
        except Exception as exc:  # the two main ceilings still count
            result["fp32_fma"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", required=True, help="where to write the result")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (use --device cpu)")
    result = measure(args.device)
    with open(args.json + ".tmp", "w") as fh:
        json.dump(result, fh, indent=1)
    os.replace(args.json + ".tmp", args.json)
    fma = result.get("fp32_fma", {}).get("flops_per_s")
    print(f"ceilings on {result['device']}: copy {result['copy']['bytes_per_s'] / 1e9:.1f} GB/s (read + write), "
          f"{result['matmul']['dtype']} matmul {result['matmul']['flops_per_s'] / 1e9:.0f} GFLOP/s"
          + (f", fp32 FMA {fma / 1e9:.0f} GFLOP/s" if fma else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
