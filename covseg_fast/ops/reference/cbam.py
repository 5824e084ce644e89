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
    c = x.shape[1]
    caf = ca.to(acc)[:, :, None, None]
    xf = x.to(acc)
    hit = (xf * caf == pooled[:, :1]).to(acc)
    g1 = hit * (g_pooled[:, :1] / count[:, None].clamp_min(1).to(acc)) + g_pooled[:, 1:2] / c
    return (g1 * caf).to(x.dtype), (g1 * xf).sum(dim=(2, 3)).to(ca.dtype)


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


def mlp(v: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """The shared channel MLP: Linear(C→h) → ReLU → Linear(h→C), both biased."""
    return F.linear(F.relu(F.linear(v, w1, b1)), w2, b2)


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
