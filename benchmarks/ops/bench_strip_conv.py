"""MSCA strip convolution: eager reference vs torch.compile(reference) vs the Triton op (KERNELS.md §2).

Run: ``OMP_NUM_THREADS=1 python -m pytest benchmarks/ops/bench_strip_conv.py --benchmark-json out.json``
(GPU shapes skip with a reason on CPU; ``cpu_tiny`` runs anywhere with the eager and compile providers).

Timed: ``s = a0 + Σ v_i(h_i(a0))`` with SegNeXt kernels (5; 7, 11, 21), bf16 on CUDA, fp32 on CPU, in both
layouts: ``nchw`` and ``channels_last`` (what CUDA training uses: the Trainer converts model and batch).
``fwd`` = forward under no_grad; ``fwd+bwd`` = forward + backward of sum(s·g) w.r.t. x and all weights.
``compile`` compiles afresh per case (``compile_guard.CompiledBaseline``).
"""
from __future__ import annotations

import os

import pytest
import torch

from compile_guard import CompiledBaseline
from conftest import bench_rounds, measure_peak_memory, params, synchronize
from shapes import MSA_LEVELS
from covseg_fast.ops import strip_conv, use_backend
from covseg_fast.ops.reference.strip_conv import strip_conv as reference

HAS_CUDA = torch.cuda.is_available()
# name: (B, C, H, W)
SHAPES = {**MSA_LEVELS, "cpu_tiny": (2, 16, 32, 32)}
# triton: the default single-pass forward; triton_split: the three-launch forward (same backward)
PROVIDERS = ["eager", "compile", "triton", "triton_split"]
MODES = ["fwd", "fwd+bwd"]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
KERNELS = (5, (7, 11, 21))


def _case(shape_name: str, provider: str):
    if shape_name == "cpu_tiny":
        if provider.startswith("triton"):
            pytest.skip("the Triton provider needs a CUDA device (the CPU interpreter is not a benchmark)")
        return "cpu", torch.float32
    if not HAS_CUDA:
        pytest.skip(f"{shape_name} is a GPU shape; this machine has no CUDA device")
    return "cuda", torch.bfloat16


def _inputs(shape, device, dtype, grad, layout=torch.contiguous_format):
    b, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    k0, ks = KERNELS

    def rnd(*s, scale=1.0):
        return (torch.randn(s, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_(grad)

    x = (torch.randn(b, c, h, w, generator=gen)).to(device=device, dtype=dtype, memory_format=layout)
    x.requires_grad_(grad)
    w0, b0 = rnd(c, 1, k0, k0, scale=(2 / k0**2) ** 0.5), rnd(c, scale=0.1)
    wh = [rnd(c, 1, 1, k, scale=(2 / k) ** 0.5) for k in ks]
    bh = [rnd(c, scale=0.1) for _ in ks]
    wv = [rnd(c, 1, k, 1, scale=(2 / k) ** 0.5) for k in ks]
    bv = [rnd(c, scale=0.1) for _ in ks]
    return x, w0, b0, wh, bh, wv, bv


def _triton(*args):
    with use_backend("triton"):
        return strip_conv(*args)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape_name", params(SHAPES, {"cpu_tiny"}))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_strip_conv(benchmark, record, monkeypatch, provider, shape_name, mode, layout):
    device, dtype = _case(shape_name, provider)
    monkeypatch.setenv("COVSEG_STRIP_CONV_SCHEDULE", "split" if provider == "triton_split" else "single")
    benchmark.group = f"strip_conv {shape_name} {mode} {layout}"
    train = mode == "fwd+bwd"
    args = _inputs(SHAPES[shape_name], device, dtype, train, LAYOUTS[layout])
    x, w0, b0, wh, bh, wv, bv = args
    leaves = [x, w0, b0, *wh, *bh, *wv, *bv]
    fn = {"eager": reference, "compile": CompiledBaseline(reference) if provider == "compile" else None,
          "triton": _triton, "triton_split": _triton}[provider]
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(
        device=device, dtype=dtype, memory_format=LAYOUTS[layout])

    def step():
        if train:
            out = fn(*args)
            grads = torch.autograd.grad(out, leaves, g)
        else:
            with torch.no_grad():
                out = fn(*args)
            grads = None
        synchronize(device)
        return out, grads

    for _ in range(3):  # warm-up: compile, Triton JIT, cudnn
        step()
    compiled = isinstance(fn, CompiledBaseline)
    if compiled:
        fn.warmed()
    peak = measure_peak_memory(step, device)
    rounds = bench_rounds(5 if device == "cpu" else 20)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    if compiled:
        fn.check_timed()
    record(provider=provider, schedule=os.environ["COVSEG_STRIP_CONV_SCHEDULE"], shape=shape_name, mode=mode,
           layout=layout, dtype=str(dtype), kernels=str(KERNELS),
           bytes_x=x.numel() * x.element_size(), peak_memory_bytes=peak, **(fn.info() if compiled else {}))

    # check the result after timing against the reference run in fp32 on the same inputs
    out, grads = step()
    args32 = [[t.detach().float().requires_grad_(train) for t in a] if isinstance(a, list)
              else a.detach().float().requires_grad_(train) for a in args]
    leaves32 = [args32[0], args32[1], args32[2], *[t for a in args32[3:] for t in a]]
    want = reference(*args32)
    tol = 1e-4 if dtype == torch.float32 else 3e-2

    def close(a, b, what):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), atol=tol * max(scale, 1.0), rtol=tol, msg=what)

    close(out.detach(), want.detach(), "output")
    if train:
        for i, (a, b) in enumerate(zip(grads, torch.autograd.grad(want, leaves32, g.float()))):
            close(a, b, f"grad {i}")
