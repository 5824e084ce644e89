"""Ref-Net training step and inference: images/s and peak memory per provider.

Providers: ``fused`` (fused ops: covseg::structure_loss via Triton, APM with fused=True),
``eager`` (pure-PyTorch references), ``compile`` (torch.compile of the eager model and loss).
Shapes: ``b16_352`` (batch 16, 352×352, bf16 autocast, CUDA; the paper's training size) and
``tiny_cpu`` (batch 2, 64×64, fp32, CPU; runs anywhere, a smoke test, not a speed claim; a ``cpu_case``).
The GPU shape runs in both layouts: ``channels_last`` (as the Trainer does on CUDA) and ``nchw``;
``compile`` compiles afresh per case (``compile_guard.CompiledBaseline``).
Modes: ``train`` (forward + 4 structure losses + edge loss + backward + Adam step) and ``infer``
(eval forward, no grad).

Run: ``python -m pytest benchmarks/models/bench_refnet.py --benchmark-json benchmarks/results/refnet.json``
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from compile_guard import CompiledBaseline
from conftest import CPU_CASE, bench_rounds, measure_peak_memory, synchronize
from covseg_fast.losses import RefNetLoss
from covseg_fast.models import get_model
from covseg_fast.ops import use_backend

SHAPES = {
    "b16_352": dict(batch=16, size=352, device="cuda", dtype=torch.bfloat16, rounds=10),
    "tiny_cpu": dict(batch=2, size=64, device="cpu", dtype=None, rounds=2),
}
PROVIDERS = ["fused", "eager", "compile"]
# (shape, layout): the GPU shape in both layouts, the CPU one in NCHW
CASES = [("b16_352", "channels_last"), ("b16_352", "nchw"),
         pytest.param("tiny_cpu", "nchw", marks=getattr(pytest.mark, CPU_CASE), id="tiny_cpu-nchw")]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _setup(provider: str, shape: dict, layout: str = "nchw"):
    torch.manual_seed(0)
    device = shape["device"]
    fmt = LAYOUTS[layout]
    model = get_model("refnet", fused=provider == "fused").to(device, memory_format=fmt)
    criterion = RefNetLoss(fused=provider == "fused")
    b, s = shape["batch"], shape["size"]
    x = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=fmt)
    yy, xx = torch.meshgrid(torch.arange(s, device=device), torch.arange(s, device=device), indexing="ij")
    mask = (((yy - s / 2) ** 2 + (xx - s / 3) ** 2) < (s / 4) ** 2).float().expand(b, 1, s, s).contiguous()
    return model, criterion, x, {"mask": mask}


def _autocast(shape):
    if shape["dtype"] is None:
        return contextlib.nullcontext()
    return torch.autocast(shape["device"], dtype=shape["dtype"])


def _skip_reason(provider: str, shape: dict):
    if shape["device"] == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA GPU; this machine has none"
    if provider == "compile" and shape["device"] == "cpu":
        return "torch.compile of Ref-Net on CPU takes minutes of Inductor time on 2 shared cores; measured on GPU"
    return None


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name,layout", CASES)
def test_train_step(benchmark, record, provider, shape_name, layout):
    shape = SHAPES[shape_name]
    reason = _skip_reason(provider, shape)
    if reason:
        pytest.skip(reason)
    model, criterion, x, batch = _setup(provider, shape, layout)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    forward = CompiledBaseline(model) if provider == "compile" else model
    backend = None if provider == "fused" else "reference"
    losses = []

    def step():
        with use_backend(backend), _autocast(shape):
            opt.zero_grad(set_to_none=True)
            out = forward(x)
            loss, _ = criterion(out, batch)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        synchronize(shape["device"])

    step()  # warm-up (compilation, autotuning)
    compiled = isinstance(forward, CompiledBaseline)
    if compiled:
        forward.warmed()
    peak = measure_peak_memory(step, shape["device"])
    benchmark.group = f"refnet {shape_name} {layout} train"
    benchmark.pedantic(step, rounds=bench_rounds(shape["rounds"]), iterations=1, warmup_rounds=1)
    if compiled:
        forward.check_timed()
    mean = benchmark.stats.stats.mean
    record(provider=provider, shape=shape_name, layout=layout, mode="train", batch=shape["batch"],
           size=shape["size"], dtype=str(shape["dtype"]), images_per_s=shape["batch"] / mean, peak_bytes=peak,
           **(forward.info() if compiled else {}))
    assert all(torch.isfinite(v) for v in losses), "non-finite loss"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name,layout", CASES)
def test_inference(benchmark, record, provider, shape_name, layout):
    shape = SHAPES[shape_name]
    reason = _skip_reason(provider, shape)
    if reason:
        pytest.skip(reason)
    model, _, x, _ = _setup(provider, shape, layout)
    model.eval()
    forward = CompiledBaseline(model) if provider == "compile" else model
    backend = None if provider == "fused" else "reference"
    result = {}

    def infer():
        with torch.no_grad(), use_backend(backend), _autocast(shape):
            result["out"] = forward(x)
        synchronize(shape["device"])

    infer()
    compiled = isinstance(forward, CompiledBaseline)
    if compiled:
        forward.warmed()
    peak = measure_peak_memory(infer, shape["device"])
    benchmark.group = f"refnet {shape_name} {layout} infer"
    benchmark.pedantic(infer, rounds=bench_rounds(shape["rounds"]), iterations=1, warmup_rounds=1)
    if compiled:
        forward.check_timed()
    mean = benchmark.stats.stats.mean
    record(provider=provider, shape=shape_name, layout=layout, mode="infer", batch=shape["batch"],
           size=shape["size"], dtype=str(shape["dtype"]), images_per_s=shape["batch"] / mean, peak_bytes=peak,
           **(forward.info() if compiled else {}))
    out = result["out"]
    assert tuple(out.shape) == (shape["batch"], 1, shape["size"], shape["size"]) and torch.isfinite(out).all()
    with torch.no_grad(), _autocast(shape), use_backend("reference"):
        ref = model(x)
    torch.testing.assert_close(out.float(), ref.float(), atol=5e-2 if shape["dtype"] else 1e-4, rtol=5e-2)
