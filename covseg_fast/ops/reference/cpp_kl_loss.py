"""Spec of the fused CPP-KL auxiliary loss of MSA-UNet (MODELS.md §3.4, §11 A5).

For aux logits z (B, K, h, w) and an integer label map L (B, h·s, w·s):

    t    = CPP_s(L)                       (B, K, h, w)   class fractions of each s×s window
    logq = log_softmax(z, dim=1)
    loss = (1 / (B·h·w)) · Σ_{b,k,i,j} t·(log t − log q),    0·log 0 := 0

i.e. ``kl_div(logq, t, reduction='sum') / (B·h·w)`` ("per-pixel mean"). Pixels equal to
``ignore_index`` count for no class (the window's fractions then sum to < 1), as in
``class_prob_pool``. The loss is computed in float32 (float64 for float64 logits).

Gradient: ∂loss/∂z = (q·Σ_k t_k − t) / (B·h·w).
"""
from __future__ import annotations

from typing import Optional

import torch

from .class_prob_pool import class_prob_pool


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cpp_kl_from_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) summed and divided by B·h·w; target (B, K, h, w) fractions."""
    dtype = compute_dtype(logits.dtype)
    logq = torch.log_softmax(logits.to(dtype), dim=1)
    t = target.to(dtype)
    b, _, h, w = logits.shape
    return (torch.xlogy(t, t) - t * logq).sum() / max(b * h * w, 1)


def cpp_kl_loss(logits: torch.Tensor, labels: torch.Tensor, scale: int,
                ignore_index: Optional[int] = None) -> torch.Tensor:
    """Reference: CPP-pool ``labels`` by ``scale``, then per-pixel-mean KL against softmax(logits).

    Args:
        logits: (B, K, h, w) floating aux logits.
        labels: (B, h·scale, w·scale) integer class map.
        scale: window size s.
        ignore_index: label value that counts for no class.
    Returns:
        0-dim float32 tensor (float64 for float64 logits).
    """
    k = logits.shape[1]
    t = class_prob_pool(labels, k, [scale], ignore_index)[0]
    return cpp_kl_from_probs(logits, t)


def cpp_kl_loss_backward(grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, scale: int,
                         ignore_index: Optional[int] = None) -> torch.Tensor:
    """Reference gradient w.r.t. ``logits``: grad · (softmax(z)·Σt − t) / (B·h·w), in logits' dtype."""
    dtype = compute_dtype(logits.dtype)
    k = logits.shape[1]
    t = class_prob_pool(labels, k, [scale], ignore_index)[0].to(dtype)
    b, _, h, w = logits.shape
    q = torch.softmax(logits.to(dtype), dim=1)
    g = (q * t.sum(1, keepdim=True) - t) * (grad.to(dtype) / max(b * h * w, 1))
    return g.to(logits.dtype)
