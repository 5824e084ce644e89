"""256-threshold sweep (Dice/Sen/Spec/Pre/F/E for all thresholds): histogram recipe vs a
per-threshold loop (how the MATLAB toolbox computes it), on a batch of maps.

Run: python -m pytest benchmarks/bench_metrics.py --benchmark-json benchmarks/results/metrics.json
"""
from __future__ import annotations

import pytest
import torch

from conftest import params
from covseg_fast.metrics import sweep_counts, sweep_scores

SHAPES = {"semiseg_352x8": (8, 352, 352), "ct_512x4": (4, 512, 512)}
DEVICES = ["cpu", "cuda"]


def loop_sweep(p: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-threshold loop: 256 binarisations of the whole batch (the toolbox's way, batched)."""
    b = p.shape[0]
    pf, gf = p.reshape(b, -1), g.reshape(b, -1)
    tps, nrs = [], []
    for t in range(255, -1, -1):
        fm = pf >= t / 255
        tps.append((fm & gf).sum(1))
        nrs.append(fm.sum(1))
    tp, nr = torch.stack(tps, 1), torch.stack(nrs, 1)
    return sweep_scores(tp, nr, gf.sum(1), torch.full((b,), gf.shape[1], device=p.device))


def histogram_sweep(p: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    return sweep_scores(*sweep_counts(p, g))


@pytest.mark.parametrize("device", params(DEVICES, {"cpu"}))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", ["loop", "histogram"])
def test_sweep(benchmark, record, device, shape, provider):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = torch.Generator().manual_seed(0)
    dims = SHAPES[shape]
    # quantised maps (as after the Inf-Net uint8 round trip): both providers agree exactly
    p = (torch.randint(0, 256, dims, generator=gen).double() / 255).to(device)
    g = (torch.rand(dims, generator=gen) > 0.8).to(device)
    fn = loop_sweep if provider == "loop" else histogram_sweep

    def run():
        out = fn(p, g)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    record(provider=provider, shape=shape, mode="fwd", device_kind=device)
    out = benchmark(run)
    ref = loop_sweep(p, g) if provider == "histogram" else histogram_sweep(p, g)
    for k in ("dice", "specificity", "emeasure"):
        torch.testing.assert_close(out[k], ref[k])
