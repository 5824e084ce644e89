"""MSA-UNet training step (fwd + bwd + RMSprop step) and inference throughput.

Providers: ``fused`` (fused=True modules + fused CPP-KL loss), ``reference`` (pure PyTorch, forced with
use_backend("reference")), ``compile`` (torch.compile of the reference). Shapes:
``gpu_b16_256`` (batch 16, 3×256×256, base 64, bf16 autocast; CUDA only) and ``cpu_tiny`` (batch 2, 3×64×64,
base 8, fp32; runs anywhere, a ``cpu_case``). The GPU shape runs in both layouts: ``channels_last`` (model and
batch converted, as the Trainer does on CUDA) and ``nchw``. images/s and peak CUDA memory go into extra_info.
``compile`` compiles afresh per case (``compile_guard.CompiledBaseline``).

Run: ``python -m pytest benchmarks/models/bench_msa_unet.py --benchmark-json benchmarks/results/<name>.json``
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from compile_guard import CompiledBaseline
from conftest import CPU_CASE, bench_rounds, measure_peak_memory, synchronize
from covseg_fast.models import get_criterion, get_model
from covseg_fast.ops import use_backend

SHAPES = {
    "gpu_b16_256": dict(device="cuda", batch=16, size=256, base=64, dtype=torch.bfloat16, rounds=20, warmup=3),
    "cpu_tiny": dict(device="cpu", batch=2, size=64, base=8, dtype=torch.float32, rounds=5, warmup=1),
}
PROVIDERS = ["fused", "reference", "compile"]
# (shape, layout): the GPU shape in both layouts, the CPU one in NCHW
CASES = [("gpu_b16_256", "channels_last"), ("gpu_b16_256", "nchw"),
         pytest.param("cpu_tiny", "nchw", marks=getattr(pytest.mark, CPU_CASE), id="cpu_tiny-nchw")]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _setup(provider: str, shape: dict, layout: str = "nchw"):
    torch.manual_seed(0)
    fused = provider == "fused"
    fmt = LAYOUTS[layout]
    model = get_model("msa_unet", base=shape["base"], fused=fused).to(shape["device"], memory_format=fmt)
    criterion = get_criterion("msa_unet", fused=fused)
    x = torch.randn(shape["batch"], 3, shape["size"], shape["size"], device=shape["device"])
    x = x.contiguous(memory_format=fmt)
    mask = (torch.rand(shape["batch"], 1, shape["size"], shape["size"], device=shape["device"]) > 0.8).float()
    runner = CompiledBaseline(model) if provider == "compile" else model
    backend = contextlib.nullcontext if fused else (lambda: use_backend("reference"))
    autocast = (lambda: torch.autocast("cuda", dtype=shape["dtype"])) if shape["dtype"] != torch.float32 \
        else contextlib.nullcontext
    return model, runner, criterion, x, {"mask": mask}, backend, autocast


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("shape_name,layout", CASES)
def test_msa_unet(benchmark, record, shape_name, layout, mode, provider):
    shape = SHAPES[shape_name]
    if shape["device"] == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; this machine has none")
    model, runner, criterion, x, batch, backend, autocast = _setup(provider, shape, layout)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=1e-4)
    result = {}

    def train_step():
        with backend(), autocast():
            loss, _ = criterion(runner(x), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result["check"] = loss.detach()
        synchronize(shape["device"])

    @torch.no_grad()
    def infer():
        with backend(), autocast():
            result["check"] = runner(x)
        synchronize(shape["device"])

    if mode == "train":
        model.train()
        fn = train_step
    else:
        model.eval()
        fn = infer
    fn()  # first call outside timing (compilation, autotuning)
    compiled = isinstance(runner, CompiledBaseline)
    if compiled:
        runner.warmed()
    peak = measure_peak_memory(fn, shape["device"])
    benchmark.group = f"msa_unet {shape_name} {layout} {mode}"
    benchmark.pedantic(fn, rounds=bench_rounds(shape["rounds"]), warmup_rounds=shape["warmup"], iterations=1)
    if compiled:
        runner.check_timed()
    mean = benchmark.stats.stats.mean
    record(provider=provider, shape=shape_name, layout=layout, mode=mode, batch=shape["batch"], size=shape["size"],
           base=shape["base"], dtype=str(shape["dtype"]), peak_memory_bytes=peak,
           images_per_s=shape["batch"] / mean, **(runner.info() if compiled else {}))
    check = result["check"]
    assert torch.isfinite(check.float()).all()
    if mode == "infer":
        assert check.shape == (shape["batch"], 1, shape["size"], shape["size"])
    # the timed provider computes what the reference computes, on the current weights: logits (infer) or
    # the loss (train), bf16 within 5e-2, fp32 within 1e-4
    reference_criterion = get_criterion("msa_unet", fused=False)
    with torch.no_grad(), backend(), autocast():
        got = runner(x) if mode == "infer" else criterion(runner(x), batch)[0]
    with torch.no_grad(), use_backend("reference"), autocast():
        want = model(x) if mode == "infer" else reference_criterion(model(x), batch)[0]
    tol = 1e-4 if shape["dtype"] == torch.float32 else 5e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
