"""Position attention (PAM/SA) and channel attention (CAM/CA): eager reference, torch.compile(reference),
SDPA and the fused op; fwd and fwd+bwd; bf16 on CUDA; peak memory recorded for every provider.

Run: ``python -m pytest benchmarks/ops/bench_attention.py --benchmark-json benchmarks/results/attention.json``

SDPA: ``F.scaled_dot_product_attention(q, k, v, scale=1.0)`` with q, k (B, 1, N, Cq) and v (B, 1, N, C):
no padding; SDPA accepts dv ≠ dqk and dispatches itself (on H100 to the mem-efficient kernel for such
pairs, or to math). Our (B, C, N) tensors are transposed to (B, 1, N, C) and made contiguous inside the
timed call (the kernels need a unit last-dim stride); the output is transposed back as a view.
For channel attention SDPA runs with sequence = C and head dim = N zero-padded to a multiple of 8
(121 → 128; zeros change neither X Xᵀ nor the kept outputs), q = ±X, k = v = X, scale = 1.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import measure_peak_memory, synchronize
from covseg_fast.ops import channel_attention, position_attention
from covseg_fast.ops.channel_attention import BACKENDS as CA_BACKENDS
from covseg_fast.ops.position_attention import BACKENDS as PA_BACKENDS
from covseg_fast.ops.reference import attention as ref

CUDA = torch.cuda.is_available()
# name: (B, Cq, C, N, device)
PA_SHAPES = {
    "tiny_cpu": (2, 8, 16, 64, "cpu"),
    "refnet_f5": (16, 256, 2048, 121, "cuda"),
    "msa_32": (16, 64, 512, 1024, "cuda"),
    "msa_64": (16, 32, 256, 4096, "cuda"),
    "f2_128": (16, 32, 256, 16384, "cuda"),
}
# name: (B, C, N, device)
CA_SHAPES = {"tiny_cpu": (2, 32, 49, "cpu"), "refnet_f5": (16, 2048, 121, "cuda")}
PROVIDERS = ["eager", "compile", "sdpa", "fused"]
MODES = ["fwd", "fwd+bwd"]
# Eager/compile keep fp32 N×N energy and probabilities (×B) alive for backward.
EAGER_LIMIT_BYTES = 24 * 2**30


def _sdpa_pa(q, k, v, scale=1.0):
    t = lambda x: x.transpose(1, 2).unsqueeze(1).contiguous()  # noqa: E731  (B, C, N) -> (B, 1, N, C)
    return F.scaled_dot_product_attention(t(q), t(k), t(v), scale=scale).squeeze(1).transpose(1, 2)


def _sdpa_ca(x, variant="pfnet"):
    n = x.shape[-1]
    xp = F.pad(x, (0, (-n) % 8)).unsqueeze(1)  # (B, 1, C, N8): sequence = channels
    q = xp if variant == "pfnet" else -xp
    return F.scaled_dot_product_attention(q, xp, xp, scale=1.0).squeeze(1)[..., :n]


_compiled: dict = {}


def _provider_fn(kind: str, provider: str):
    if provider == "eager":
        return ref.position_attention if kind == "pa" else ref.channel_attention
    if provider == "compile":
        if kind not in _compiled:
            _compiled[kind] = torch.compile(ref.position_attention if kind == "pa" else ref.channel_attention)
        return _compiled[kind]
    if provider == "sdpa":
        return _sdpa_pa if kind == "pa" else _sdpa_ca
    return position_attention if kind == "pa" else channel_attention


def _runner(fn, inputs, mode, device):
    grad = {}

    def run():
        out = fn(*inputs)
        if mode == "fwd+bwd":
            if "g" not in grad:
                grad["g"] = torch.randn_like(out)
            out.backward(grad["g"])
        synchronize(device)
        return out

    return run


def _bench(benchmark, record, kind, shape_name, provider, mode, inputs, extra_args, check, device, backend_name):
    fn = _provider_fn(kind, provider)
    call_inputs = [*inputs, *extra_args]
    run = _runner(fn, call_inputs, mode, device)
    run()  # warm-up (compilation, autotuning caches)
    peak = measure_peak_memory(run, device)
    rounds = 20 if device == "cuda" else 3
    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
        out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    record(provider=provider, shape=shape_name, mode=mode, kind=kind, dtype=str(inputs[0].dtype),
           peak_memory_bytes=peak, fused_backend=backend_name if provider == "fused" else None)
    check(out)


def _pa_inputs(shape_name, mode):
    b, cq, c, n, device = PA_SHAPES[shape_name]
    if device == "cuda" and not CUDA:
        pytest.skip(f"{shape_name} is a GPU shape; this machine has no CUDA device")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    q, k = (torch.randn(b, cq, n, generator=g, device=device, dtype=dtype) * cq ** -0.5 for _ in range(2))
    v = torch.randn(b, c, n, generator=g, device=device, dtype=dtype)
    return [t.requires_grad_(mode == "fwd+bwd") for t in (q, k, v)], device


def _close_to_reference(out, gold, what):
    err = (out.float() - gold.float()).abs().max().item()
    tol = 3e-2 * max(1.0, gold.float().abs().max().item())
    assert err <= tol, f"{what}: max error {err:.3e} > {tol:.3e}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name", list(PA_SHAPES))
def test_position_attention(benchmark, record, shape_name, provider, mode):
    inputs, device = _pa_inputs(shape_name, mode)
    b, cq, c, n, _ = PA_SHAPES[shape_name]
    eager_bytes = 2 * 4 * b * n * n  # fp32 energy + probabilities
    if provider in ("eager", "compile") and eager_bytes > EAGER_LIMIT_BYTES:
        pytest.skip(f"{provider} materialises {eager_bytes / 2**30:.0f} GiB of fp32 N×N matrices at {shape_name}")

    def check(out):  # against the float32 reference on the first image (fits even at N = 16384)
        with torch.no_grad():
            gold = ref.position_attention(*(t[:1].detach().float() for t in inputs))
        _close_to_reference(out[:1].detach(), gold, f"{provider} {shape_name}")

    backend = PA_BACKENDS.select(device, *inputs, 1.0).name
    _bench(benchmark, record, "pa", shape_name, provider, mode, inputs, [], check, device, backend)


@pytest.mark.parametrize("variant", ["pfnet", "danet"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name", list(CA_SHAPES))
def test_channel_attention(benchmark, record, shape_name, provider, mode, variant):
    b, c, n, device = CA_SHAPES[shape_name]
    if device == "cuda" and not CUDA:
        pytest.skip(f"{shape_name} is a GPU shape; this machine has no CUDA device")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    # post-ReLU-like features scaled so the softmax is not one-hot
    x = (torch.rand(b, c, n, generator=g, device=device) * (2.0 / n ** 0.5)).to(dtype)
    x.requires_grad_(mode == "fwd+bwd")

    def check(out):
        with torch.no_grad():
            gold = ref.channel_attention(x[:1].detach().float(), variant)
        _close_to_reference(out[:1].detach(), gold, f"{provider} {shape_name} {variant}")

    backend = CA_BACKENDS.select(device, x, variant).name
    _bench(benchmark, record, "ca", shape_name, provider, mode, [x], [variant], check, device, backend)
