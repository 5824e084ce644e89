"""Position attention (PAM/SA) and channel attention (CAM/CA): eager reference, torch.compile(reference),
SDPA and the fused op; fwd and fwd+bwd; bf16 on CUDA; peak memory recorded for every provider that runs.

Run: ``python -m pytest benchmarks/ops/bench_attention.py --benchmark-json benchmarks/results/attention.json``

Every case's ``extra_info`` holds ``flops`` (position attention: 2·B·N²·(Cq + C) forward, ×3.5 for
fwd+bwd; channel attention: the 4·B·C²·N the math needs forward, 10·B·C²·N with backward) and ``bytes``
(compulsory HBM traffic: inputs read once, outputs written once), so TFLOP/s and TB/s follow from the
median; channel attention adds the fused path taken and that path's estimated executed FLOPs and bytes
(``covseg_fast/ops/triton/attention_cost.py``). Position attention records the analytic peak of the
eager reference (fp32 N×N tensors alive at once: 2 forward, 3 with backward) in every case, and eager /
compile are skipped, with that estimate in the reason, where it exceeds 60 % of the GPU's memory
(f2_128: 34 GB forward runs on an 80 GB H100; 52 GB fwd+bwd is skipped).

SDPA: ``F.scaled_dot_product_attention(q, k, v, scale=1.0)`` with q, k (B, 1, N, Cq) and v (B, 1, N, C):
no padding; SDPA accepts dv ≠ dqk and dispatches itself (on H100 to the mem-efficient kernel for such
pairs, or to math). Our (B, C, N) tensors are transposed to (B, 1, N, C) and made contiguous inside the
timed call (the kernels need a unit last-dim stride); the output is transposed back as a view.
For channel attention SDPA runs with sequence = C and head dim = N zero-padded to a multiple of 8
(121 → 128; zeros change neither X Xᵀ nor the kept outputs), q = ±X, k = v = X, scale = 1.

Channel attention is timed as the module runs it, γ·CA(x) + x with a learnable γ (the fused op applies
the residual in its epilogue; the other providers add it as PyTorch ops). ``fused`` takes the path the
cost model picks; ``fused_gram`` / ``fused_flash`` force one (COVSEG_CHANNEL_ATTENTION_PATH), to check
the model's choice on the GPU.

``compile`` compiles afresh for every case (``compile_guard.CompiledBaseline``: Dynamo reset,
``dynamic=False``) and fails the case unless the warm-up compiled a graph and the timed rounds compiled
nothing: one compiled function shared by all cases hit the recompile limit and timed eager from the ninth.
Warm-up, peak memory and timing all run in the timed grad mode, so no guard differs between them.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from compile_guard import CompiledBaseline
from conftest import bench_rounds, measure_peak_memory, params, synchronize
from covseg_fast.ops import channel_attention, position_attention
from covseg_fast.ops.channel_attention import BACKENDS as CA_BACKENDS
from covseg_fast.ops.position_attention import BACKENDS as PA_BACKENDS
from covseg_fast.ops.reference import attention as ref
from covseg_fast.ops.triton import attention_cost as cost

CUDA = torch.cuda.is_available()
# name: (B, Cq, C, N, device)
PA_SHAPES = {
    "tiny_cpu": (2, 8, 16, 64, "cpu"),
    "refnet_f5": (16, 256, 2048, 121, "cuda"),
    "msa_32": (16, 64, 512, 1024, "cuda"),
    "msa_64": (16, 32, 256, 4096, "cuda"),
    "f2_128": (16, 32, 256, 16384, "cuda"),
}
# name: (B, C, N, device). apm_f5 / apm_f2_512: Ref-Net's APM at f5 of a 352² input and at f2 of a 512² one.
CA_SHAPES = {
    "tiny_cpu": (2, 32, 49, "cpu"),
    "refnet_f5": (16, 2048, 121, "cuda"),
    "apm_f5": (16, 512, 121, "cuda"),
    "apm_f2_512": (16, 64, 16384, "cuda"),
}
PROVIDERS = ["eager", "compile", "sdpa", "fused"]
CA_PROVIDERS = [*PROVIDERS, "fused_gram", "fused_flash"]
MODES = ["fwd", "fwd+bwd"]


def eager_limit_bytes() -> float:
    """Eager/compile keep fp32 N×N tensors alive: run them only up to 60 % of the GPU's memory."""
    if CUDA:
        return 0.6 * torch.cuda.get_device_properties(0).total_memory
    return 24 * 2**30


def _sdpa_pa(q, k, v, scale=1.0):
    t = lambda x: x.transpose(1, 2).unsqueeze(1).contiguous()  # noqa: E731  (B, C, N) -> (B, 1, N, C)
    return F.scaled_dot_product_attention(t(q), t(k), t(v), scale=scale).squeeze(1).transpose(1, 2)


def _sdpa_ca(x, variant, gamma):
    n = x.shape[-1]
    xp = F.pad(x, (0, (-n) % 8)).unsqueeze(1)  # (B, 1, C, N8): sequence = channels
    q = xp if variant == "pfnet" else -xp
    return gamma * F.scaled_dot_product_attention(q, xp, xp, scale=1.0).squeeze(1)[..., :n] + x


def _eager_ca(x, variant, gamma):
    return ref.channel_attention(x, variant, gamma)


def _fused_ca(path):
    def run(x, variant, gamma):
        if path is None:
            return channel_attention(x, variant, gamma)
        saved = os.environ.get(cost.PATH_ENV)
        os.environ[cost.PATH_ENV] = path
        try:
            return channel_attention(x, variant, gamma)
        finally:
            if saved is None:
                os.environ.pop(cost.PATH_ENV)
            else:
                os.environ[cost.PATH_ENV] = saved

    return run


def _provider_fn(kind: str, provider: str):
    if provider == "eager":
        return ref.position_attention if kind == "pa" else _eager_ca
    if provider == "compile":
        return CompiledBaseline(ref.position_attention if kind == "pa" else _eager_ca)
    if provider == "sdpa":
        return _sdpa_pa if kind == "pa" else _sdpa_ca
    if kind == "pa":
        return position_attention
    return _fused_ca({"fused": None, "fused_gram": "gram", "fused_flash": "flash"}[provider])


def _runner(fn, inputs, mode, device):
    grad = {}
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run():
        for t in leaves:  # a fresh .grad each round: no accumulate kernel after the first
            t.grad = None
        out = fn(*inputs)
        if mode == "fwd+bwd":
            if "g" not in grad:
                grad["g"] = torch.randn_like(out)
            out.backward(grad["g"])
        synchronize(device)
        return out

    return run


def _bench(benchmark, record, kind, shape_name, provider, mode, inputs, extra_args, check, device, info):
    fn = _provider_fn(kind, provider)
    call_inputs = [*inputs, *extra_args]
    run = _runner(fn, call_inputs, mode, device)
    rounds = bench_rounds(20 if device == "cuda" else 3)
    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
        run()  # warm-up (compilation, autotuning caches)
        if isinstance(fn, CompiledBaseline):
            fn.warmed()
        peak = measure_peak_memory(run, device)
        out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    if isinstance(fn, CompiledBaseline):
        fn.check_timed()
        info = {**info, **fn.info()}
    record(provider=provider, shape=shape_name, mode=mode, kind=kind, dtype=str(inputs[0].dtype),
           peak_memory_bytes=peak, **info)
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
@pytest.mark.parametrize("shape_name", params(PA_SHAPES, {"tiny_cpu"}))
def test_position_attention(benchmark, record, shape_name, provider, mode):
    b, cq, c, n, _ = PA_SHAPES[shape_name]
    backward = mode == "fwd+bwd"
    eager_peak = cost.position_eager_peak_bytes(b, n, backward)
    if provider in ("eager", "compile") and eager_peak > eager_limit_bytes():
        pytest.skip(f"{provider} at {shape_name} {mode}: estimated peak {eager_peak / 1e9:.1f} GB of fp32 N×N "
                    f"tensors > {eager_limit_bytes() / 1e9:.1f} GB (60 % of the device)")
    inputs, device = _pa_inputs(shape_name, mode)

    def check(out):  # against the float32 reference on the first image (fits even at N = 16384)
        with torch.no_grad():
            gold = ref.position_attention(*(t[:1].detach().float() for t in inputs))
        _close_to_reference(out[:1].detach(), gold, f"{provider} {shape_name}")

    info = dict(flops=cost.position_flops(b, cq, c, n, backward),
                bytes=cost.position_bytes(b, cq, c, n, inputs[0].dtype, backward),
                estimated_eager_peak_bytes=eager_peak,
                fused_backend=PA_BACKENDS.select(device, *inputs, 1.0).name if provider == "fused" else None)
    _bench(benchmark, record, "pa", shape_name, provider, mode, inputs, [], check, device, info)


@pytest.mark.parametrize("variant", ["pfnet", "danet"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", CA_PROVIDERS)
@pytest.mark.parametrize("shape_name", params(CA_SHAPES, {"tiny_cpu"}))
def test_channel_attention(benchmark, record, shape_name, provider, mode, variant):
    b, c, n, device = CA_SHAPES[shape_name]
    if device == "cuda" and not CUDA:
        pytest.skip(f"{shape_name} is a GPU shape; this machine has no CUDA device")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    backward = mode == "fwd+bwd"
    g = torch.Generator(device=device).manual_seed(0)
    # post-ReLU-like features scaled so the softmax is not one-hot
    x = (torch.rand(b, c, n, generator=g, device=device) * (2.0 / n ** 0.5)).to(dtype)
    gamma = torch.full((1,), 0.5, device=device)
    for t in (x, gamma):
        t.requires_grad_(backward)

    def check(out):
        with torch.no_grad():
            gold = ref.channel_attention(x[:1].detach().float(), variant, gamma.detach())
        _close_to_reference(out[:1].detach(), gold, f"{provider} {shape_name} {variant}")

    backend = CA_BACKENDS.select(device, x, variant, gamma).name
    info = dict(flops=cost.channel_useful_flops(b, c, n, backward),
                bytes=(5 if backward else 2) * x.numel() * x.element_size(), fused_backend=None)
    if provider.startswith("fused"):
        path = provider[len("fused_"):] or cost.channel_attention_path(b, c, n, dtype, gamma=True)
        est = (cost.channel_gram_cost(b, c, n, dtype) if path == "gram"
               else cost.channel_flash_cost(b, c, n, dtype, gamma=True))
        info.update(fused_backend=backend, path=path if backend == "triton" else None,
                    estimated_flops=est.fwd_flops + (est.bwd_flops if backward else 0.0),
                    estimated_bytes=est.fwd_bytes + (est.bwd_bytes if backward else 0.0),
                    estimated_seconds=est.seconds(dtype, backward))
    _bench(benchmark, record, "ca", shape_name, provider, mode, [x], [variant, gamma], check, device, info)
