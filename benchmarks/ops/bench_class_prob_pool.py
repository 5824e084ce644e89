"""CPP pooling: eager reference vs torch.compile(reference) vs the C++ CPU and CUDA kernels.

    python -m pytest benchmarks/ops/bench_class_prob_pool.py --benchmark-json benchmarks/results/class_prob_pool_<device>.json

Shapes (KERNELS.md §1): msa = 16×256×256 labels, K ∈ {2, 4}, scales 2/4/8/16;
refnet = 16×352×352, K = 2, scales 4/8/16/32. Labels int64 (what a DataLoader yields) and uint8. ``cpp`` runs on the CPU whatever the machine
(a ``cpu_case``); ``compile`` compiles afresh per case (``compile_guard.CompiledBaseline``).
"""
from __future__ import annotations

import pytest
import torch

from compile_guard import CompiledBaseline
from conftest import measure_peak_memory, params, synchronize
from covseg_fast.ops import REGISTRY, class_prob_pool, use_backend
from covseg_fast.ops.reference.class_prob_pool import class_prob_pool as reference

SHAPES = {
    "msa_k2": (16, 256, 256, 2, [2, 4, 8, 16]),
    "msa_k4": (16, 256, 256, 4, [2, 4, 8, 16]),
    "refnet": (16, 352, 352, 2, [4, 8, 16, 32]),
}
PROVIDERS = ["eager", "compile", "cpp", "cuda"]


def _make_fn(provider: str):
    if provider == "eager":
        return reference
    if provider == "compile":
        return CompiledBaseline(reference)

    def fused(labels, k, scales):
        with use_backend(provider):
            return class_prob_pool(labels, k, scales)

    return fused


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8], ids=["int64", "uint8"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", params(PROVIDERS, {"cpp"}))
def test_class_prob_pool(benchmark, record, provider, shape, dtype):
    device = "cuda" if provider == "cuda" else ("cuda" if torch.cuda.is_available() else "cpu")
    if provider in ("cpp", "cuda"):
        reason = REGISTRY["class_prob_pool"].get(provider).available(device)
        if reason:
            pytest.skip(f"{provider}: {reason}")
    b, h, w, k, scales = SHAPES[shape]
    labels = torch.randint(0, k, (b, h, w), generator=torch.Generator().manual_seed(0)).to(dtype).to(device)
    fn = _make_fn(provider)
    fn(labels, k, scales)  # warm-up (compilation, allocator)
    compiled = isinstance(fn, CompiledBaseline)
    if compiled:
        fn.warmed()
    benchmark.group = f"class_prob_pool {shape} {dtype}"

    def run():
        out = fn(labels, k, scales)
        synchronize(device)
        return out

    out = benchmark(run)
    bytes_moved = labels.numel() * labels.element_size() + sum(o.numel() * 4 for o in out)
    peak = measure_peak_memory(lambda: fn(labels, k, scales), device)
    if compiled:
        fn.check_timed()
    record(provider=provider, shape=shape, dtype=str(dtype), mode="fwd", compulsory_bytes=bytes_moved,
           peak_memory_bytes=peak, **(fn.info() if compiled else {}))
    expected = reference(labels.cpu(), k, scales)
    for got, exp in zip(out, expected):
        assert torch.equal(got.cpu(), exp), "benchmarked output differs from the reference"
