"""CBAM block: eager reference vs torch.compile(reference) vs the fused ops (KERNELS.md §3).

Run: ``OMP_NUM_THREADS=1 python -m pytest benchmarks/ops/bench_cbam.py --benchmark-json out.json``
(GPU shapes skip with a reason on CPU; ``cpu_tiny`` runs anywhere, where the fused provider is served by the
reference ops unless Triton can run).

The whole ``nn.CBAM`` block is timed (MLP reduction 16, train-mode BatchNorm for fwd+bwd, eval for fwd),
bf16 on CUDA, in both layouts (``nchw``; ``channels_last``, what CUDA training uses). ``fwd`` = inference
forward under no_grad; ``fwd+bwd`` = forward + backward of sum(out·g). ``compile`` compiles afresh per case
(``compile_guard.CompiledBaseline``).
"""
from __future__ import annotations

import copy

import pytest
import torch

from compile_guard import CompiledBaseline
from conftest import bench_rounds, measure_peak_memory, params, synchronize
from shapes import MSA_LEVELS, REFNET_F5
from covseg_fast.nn import CBAM

HAS_CUDA = torch.cuda.is_available()
# name: (B, C, H, W)
SHAPES = {**MSA_LEVELS, "refnet_f5": REFNET_F5, "cpu_tiny": (2, 32, 24, 24)}
PROVIDERS = ["eager", "compile", "fused"]
MODES = ["fwd", "fwd+bwd"]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _case(shape_name: str):
    if shape_name == "cpu_tiny":
        return "cpu", torch.float32
    if not HAS_CUDA:
        pytest.skip(f"{shape_name} is a GPU shape; this machine has no CUDA device")
    return "cuda", torch.bfloat16


def _models(channels: int, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    ref = CBAM(channels, zero_spatial_bn=False, fused=False)
    fused = copy.deepcopy(ref)
    fused.fused = True
    return ref.to(device=device, dtype=dtype), fused.to(device=device, dtype=dtype)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape_name", params(SHAPES, {"cpu_tiny"}))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_cbam(benchmark, record, provider, shape_name, mode, layout):
    device, dtype = _case(shape_name)
    b, c, h, w = SHAPES[shape_name]
    benchmark.group = f"cbam {shape_name} {mode} {layout}"
    ref, fused = _models(c, device, dtype)
    module = {"eager": ref, "compile": copy.deepcopy(ref), "fused": fused}[provider]
    train = mode == "fwd+bwd"
    module.train(train), ref.train(train)
    model = CompiledBaseline(module) if provider == "compile" else module
    gen = torch.Generator().manual_seed(1)
    fmt = LAYOUTS[layout]
    x = torch.randn((b, c, h, w), generator=gen).to(device=device, dtype=dtype, memory_format=fmt)
    g = torch.randn((b, c, h, w), generator=gen).to(device=device, dtype=dtype, memory_format=fmt)
    xg = x.clone().requires_grad_(train)

    def step():
        if train:
            out = model(xg)
            out.backward(g)
            xg.grad = None
        else:
            with torch.no_grad():
                out = model(x)
        synchronize(device)
        return out

    for _ in range(3):  # warm-up: compile, autotune, cudnn
        step()
    compiled = isinstance(model, CompiledBaseline)
    if compiled:
        model.warmed()
    peak = measure_peak_memory(step, device)
    rounds = bench_rounds(5 if device == "cpu" else 30)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    if compiled:
        model.check_timed()
    record(provider=provider, shape=shape_name, mode=mode, layout=layout, dtype=str(dtype),
           bytes_x=x.numel() * x.element_size(), peak_memory_bytes=peak, **(model.info() if compiled else {}))

    # check the output after timing: train mode normalises with batch statistics and eval mode never updated
    # the running ones, so the providers' different step counts cannot make them differ
    with torch.no_grad():
        out, want = model(x), ref(x)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), want.float(), atol=tol, rtol=tol)
