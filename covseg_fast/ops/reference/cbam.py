"""Spec of CBAM (MODELS.md §2.6) and of the three fused ops it is built from.

Full block, x: (B, C, H, W), MLP = Linear(C→h, bias) → ReLU → Linear(h→C, bias):
    ca  = σ(MLP(mean_HW x) + MLP(max_HW x))                (B, C)
    x₁  = x · ca[:, :, None, None]
    p   = [max_C x₁, mean_C x₁]                             (B, 2, H, W)   (that channel order)
    sa  = σ(BN(conv7×7(p)))                                 (B, 1, H, W)   (conv bias-free, BN(1))
    out = x₁ · sa

The fused path splits it into three ops around the PyTorch MLP / conv / BN:

- ``channel_stats(x)`` → (mean_HW x, max_HW x, count of the max) in fp32;
- ``spatial_pool(x, ca)`` → (p in fp32, count of the per-pixel max) without writing x₁;
- ``apply(x, ca, sa)`` → x · ca · sa, rounded once to x.dtype.

Rules every backend follows: statistics accumulate in fp32; the gradient of a max
is shared evenly among tied maxima (as ``torch.amax``), which is why the forward
returns the tie counts; the ``*_backward`` functions below are the spec of the
backward ops.

The fused backward of the whole block (``ops.cbam.cbam``) reads x three times and
writes grad_x once; its three ops are specified by

- ``apply_backward_reduce(g, x, ca, sa)`` → (Σ_HW g·x·sa, Σ_C g·x·ca): pass A, no grad_x;
- ``spatial_pool_backward_reduce(g_pooled, x, ca, pooled, count)`` → Σ_HW g₁·x: pass B;
- ``block_backward_x(...)`` → grad_x = g·ca·sa + g₁·ca + g_mean/HW + g_max·[x = max]/count: pass C,

with g₁ = g_max_C·[x·ca = max_C]/count + g_mean_C/C the spatial pool's gradient w.r.t. x·ca.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) → mean (B, C) fp32, max (B, C) fp32, #pixels equal to the max (B, C) int32."""
    xf = x.float() if x.dtype != torch.float64 else x
    mean = xf.mean(dim=(2, 3))
    mx = xf.amax(dim=(2, 3))
    count = (xf == mx[:, :, None, None]).sum(dim=(2, 3)).to(torch.int32)
    return mean, mx, count


def channel_stats_backward(g_mean: torch.Tensor, g_max: torch.Tensor, x: torch.Tensor, mx: torch.Tensor,
                           count: torch.Tensor) -> torch.Tensor:
    """grad_x = g_mean / HW + g_max · [x = max] / count, in x.dtype."""
    hw = x.shape[2] * x.shape[3]
    xf = x.to(mx.dtype)
    hit = (xf == mx[:, :, None, None]).to(mx.dtype)
    g = g_mean[:, :, None, None] / hw + hit * (g_max / count.clamp_min(1).to(mx.dtype))[:, :, None, None]
    return g.to(x.dtype)


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _pool_grad(g_pooled: torch.Tensor, x: torch.Tensor, ca: torch.Tensor, pooled: torch.Tensor, count: torch.Tensor
               ) -> torch.Tensor:
    """g₁ = ∂L/∂(x·ca) of the spatial pool = g_max·[x·ca = max_C]/count + g_mean/C, (B, C, H, W)."""
    acc = pooled.dtype
    hit = (x.to(acc) * ca.to(acc)[:, :, None, None] == pooled[:, :1]).to(acc)
    gp = g_pooled.to(acc)
    return hit * (gp[:, :1] / count[:, None].clamp_min(1).to(acc)) + gp[:, 1:2] / x.shape[1]


def spatial_pool(x: torch.Tensor, ca: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, H, W), ca: (B, C) → p = [max_C x·ca, mean_C x·ca] (B, 2, H, W) fp32, max count (B, H, W) int32."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x1 = x.to(acc) * ca.to(acc)[:, :, None, None]
    mx = x1.amax(dim=1)
    count = (x1 == mx[:, None]).sum(dim=1).to(torch.int32)
    return torch.stack([mx, x1.mean(dim=1)], dim=1), count


def spatial_pool_backward(g_pooled: torch.Tensor, x: torch.Tensor, ca: torch.Tensor, pooled: torch.Tensor,
                          count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g₁ = g_max · [x·ca = max] / count + g_mean / C;  grad_x = g₁ · ca,  grad_ca = Σ_HW g₁ · x."""
    acc = pooled.dtype
    g1 = _pool_grad(g_pooled, x, ca, pooled, count)
    return (g1 * ca.to(acc)[:, :, None, None]).to(x.dtype), (g1 * x.to(acc)).sum(dim=(2, 3)).to(ca.dtype)


def apply(x: torch.Tensor, ca: torch.Tensor, sa: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W), ca: (B, C), sa: (B, 1, H, W) → x · ca · sa in x.dtype (fp32 math)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(acc) * ca.to(acc)[:, :, None, None] * sa.to(acc)).to(x.dtype)


def apply_backward(g: torch.Tensor, x: torch.Tensor, ca: torch.Tensor, sa: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_x = g·ca·sa, grad_ca = Σ_HW g·x·sa, grad_sa = Σ_C g·x·ca (fp32 math, cast to each input's dtype)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    gf, xf = g.to(acc), x.to(acc)
    caf, saf = ca.to(acc)[:, :, None, None], sa.to(acc)
    gx = gf * xf
    return ((gf * caf * saf).to(x.dtype), (gx * saf).sum(dim=(2, 3)).to(ca.dtype),
            (gx * caf).sum(dim=1, keepdim=True).to(sa.dtype))


def apply_backward_reduce(g: torch.Tensor, x: torch.Tensor, ca: torch.Tensor, sa: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass A of the fused block backward: the reductions of ``apply_backward`` without grad_x.

    Returns grad_ca = Σ_HW g·x·sa (B, C) and grad_sa = Σ_C g·x·ca (B, 1, H, W), both fp32 (float64 for float64 x).
    """
    acc = _acc(x)
    gx = g.to(acc) * x.to(acc)
    return (gx * sa.to(acc)).sum(dim=(2, 3)), (gx * ca.to(acc)[:, :, None, None]).sum(dim=1, keepdim=True)


def spatial_pool_backward_reduce(g_pooled: torch.Tensor, x: torch.Tensor, ca: torch.Tensor, pooled: torch.Tensor,
                                 count: torch.Tensor) -> torch.Tensor:
    """Pass B: grad_ca = Σ_HW g₁·x of the spatial pool (B, C) in pooled.dtype (fp32 / float64), no grad_x."""
    return (_pool_grad(g_pooled, x, ca, pooled, count) * x.to(pooled.dtype)).sum(dim=(2, 3))


def block_backward_x(g: torch.Tensor, x: torch.Tensor, ca: torch.Tensor, sa: torch.Tensor, g_pooled: torch.Tensor,
                     pooled: torch.Tensor, pool_count: torch.Tensor, g_mean: torch.Tensor, g_max: torch.Tensor,
                     mx: torch.Tensor, stats_count: torch.Tensor) -> torch.Tensor:
    """Pass C: grad_x of the whole block, the sum of the three ops' grad_x terms, rounded once to x.dtype.

        grad_x = ca·(g·sa + g₁) + g_mean/HW + g_max·[x = max_HW]/count_HW

    g, x: (B, C, H, W); ca, g_mean, g_max, mx, stats_count: (B, C); sa: (B, 1, H, W); g_pooled, pooled: (B, 2, H, W)
    (pooled fp32 / float64, as the spatial pool returns it); pool_count: (B, H, W). grad_x has x's memory layout.
    """
    acc = _acc(x)
    hw = x.shape[2] * x.shape[3]
    xf, caf = x.to(acc), ca.to(acc)[:, :, None, None]
    hit = (xf == mx.to(acc)[:, :, None, None]).to(acc)
    g_max = g_max.to(acc) / stats_count.clamp_min(1).to(acc)
    stats = g_mean.to(acc)[:, :, None, None] / hw + hit * g_max[:, :, None, None]
    g1 = _pool_grad(g_pooled, x, ca, pooled.to(acc), pool_count)
    gx = caf * (g.to(acc) * sa.to(acc) + g1) + stats
    return torch.empty_like(x).copy_(gx)


def mlp(v: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """The shared channel MLP: Linear(C→h) → ReLU → Linear(h→C), both biased."""
    return F.linear(F.relu(F.linear(v, w1, b1)), w2, b2)


def mlp_backward(grad_logits: torch.Tensor, v: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form backward of ``mlp`` given its input v (N, C) and hidden activation h = ReLU(v·w1ᵀ + b1) (N, h).

    Returns (grad_v, grad_w1, grad_b1, grad_w2, grad_b2) in grad_logits.dtype; ReLU passes the gradient where
    h > 0 (``threshold_backward``, the op autograd's ReLU uses). The fused block uses it where autograd does
    not see the MLP.
    """
    acc = grad_logits.dtype
    h = h.to(acc)
    grad_h = torch.ops.aten.threshold_backward(grad_logits @ w2.to(acc), h, 0)
    return (grad_h @ w1.to(acc), grad_h.t() @ v.to(acc), grad_h.sum(dim=0), grad_logits.t() @ h,
            grad_logits.sum(dim=0))


def cbam(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
         conv_weight: torch.Tensor, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
         running_mean: torch.Tensor | None, running_var: torch.Tensor | None, training: bool,
         momentum: float = 0.01, eps: float = 1e-5) -> torch.Tensor:
    """The whole CBAM block in plain PyTorch (the spec; same as ``nn.CBAM(fused=False)``).

    Shapes: x (B, C, H, W), w1 (h, C), b1 (h,), w2 (C, h), b2 (C,), conv_weight (1, 2, k, k),
    bn_weight / bn_bias / running_mean / running_var (1,). In training, BN uses the batch statistics
    of the conv output and updates ``running_mean`` / ``running_var`` in place (unbiased variance,
    ``momentum``), exactly as ``nn.BatchNorm2d``; in eval it uses the running statistics.
    """
    ca = torch.sigmoid(mlp(x.mean(dim=(2, 3)), w1, b1, w2, b2) + mlp(x.amax(dim=(2, 3)), w1, b1, w2, b2))
    x1 = x * ca[:, :, None, None]
    pooled = torch.cat([x1.amax(dim=1, keepdim=True), x1.mean(dim=1, keepdim=True)], dim=1)
    s = F.conv2d(pooled, conv_weight, padding=conv_weight.shape[-1] // 2)
    s = F.batch_norm(s, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return x1 * torch.sigmoid(s)
