"""MSA-UNet's CPP-KL auxiliary loss, forward + backward: targets pooled once for every scale vs per scale.

    python -m pytest benchmarks/bench_cpp_kl_aux.py --benchmark-json benchmarks/results/cpp_kl_aux_<device>.json

The four aux maps of a batch of 16 at 256² (scales 2, 4, 8, 16); binary hard masks (K = 2, uint8 labels, the
paper's setting) and four classes (int64 labels). Providers (``losses/cpp_kl.py`` ``cpp_kl_aux_loss``):

- ``pooled``: one ``covseg::class_prob_pool`` call builds every scale's targets (C++ kernel on CPU, CUDA
  kernel on a GPU: all nested scales in one launch), then log-softmax and KL per scale in PyTorch;
- ``per_scale``: ``covseg::cpp_kl_loss`` once per scale (the Triton kernel on a GPU: pooling, log-softmax
  and KL in one kernel, forward and backward; the pure-PyTorch reference on CPU);
- ``unfused``: the reference composition per scale (one-hot pooling → log_softmax → KL), the spec;
- ``soft`` (binary only): the soft-mask composition (average-pooled mask → KL), what a soft mask takes.

Every case checks its loss and gradients against ``unfused`` after timing.
"""
from __future__ import annotations

import pytest
import torch

from conftest import synchronize
from covseg_fast.losses.cpp_kl import cpp_kl_aux_loss

SHAPES = {"msa_k2": (16, 256, 2, [2, 4, 8, 16]), "msa_k4": (16, 256, 4, [2, 4, 8, 16])}
PROVIDERS = ["pooled", "per_scale", "unfused", "soft"]


def _inputs(shape: str, device: str):
    b, size, k, scales = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    if k == 2:
        mask = (torch.rand(b, 1, size, size, generator=gen) > 0.8).float()
        labels = mask[:, 0].to(torch.uint8)
    else:
        labels = torch.randint(0, k, (b, size, size), generator=gen)
        mask = None
    aux = [torch.randn(b, k, size // s, size // s, generator=gen) for s in scales]
    return ([t.to(device) for t in aux], labels.to(device), None if mask is None else mask.to(device), scales)


def _loss_and_grads(provider: str, aux, labels, mask, scales):
    leaves = [z.detach().requires_grad_() for z in aux]
    if provider == "soft":
        terms = cpp_kl_aux_loss(leaves, mask=mask, scales=scales)
    else:
        terms = cpp_kl_aux_loss(leaves, labels=labels, scales=scales, fused=provider != "unfused",
                                check_labels=False, targets="per_scale" if provider == "unfused" else provider)
    loss = torch.stack(terms).sum()
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_cpp_kl_aux(benchmark, record, provider, shape):
    if provider == "soft" and SHAPES[shape][2] != 2:
        pytest.skip("the soft-mask composition is binary only")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    aux, labels, mask, scales = _inputs(shape, device)
    _loss_and_grads(provider, aux, labels, mask, scales)  # warm-up (Triton JIT, allocator)
    benchmark.group = f"cpp_kl_aux {shape} fwd+bwd"

    def run():
        out = _loss_and_grads(provider, aux, labels, mask, scales)
        synchronize(device)
        return out

    got = benchmark(run)
    b, size, k, _ = SHAPES[shape]
    record(provider=provider, shape=shape, mode="fwd+bwd", batch=b, size=size, classes=k, scales=scales,
           label_dtype=str(labels.dtype))
    want = _loss_and_grads("unfused", aux, labels, mask, scales)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5, msg=lambda m: f"output {i}: {m}")
