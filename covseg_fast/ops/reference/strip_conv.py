"""Spec of SegNeXt's multi-scale depthwise strip convolution (MSCA core, MODELS.md §2.5).

    a0 = dwconv_{k0×k0}(x) + b0
    a_i = dwconv_{k_i×1}(dwconv_{1×k_i}(a0) + bh_i) + bv_i        (horizontal first, then vertical)
    s  = a0 + Σ_i a_i

All convs are depthwise (groups = C), stride 1, zero "same" padding, odd kernels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def strip_conv(
    x: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor,
    wh: Sequence[torch.Tensor],
    bh: Sequence[torch.Tensor],
    wv: Sequence[torch.Tensor],
    bv: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Multi-scale strip convolution sum.

    Args:
        x: (B, C, H, W).
        w0: (C, 1, k0, k0) square depthwise kernel, b0: (C,).
        wh: per branch (C, 1, 1, k_i) horizontal kernels; bh: (C,) biases.
        wv: per branch (C, 1, k_i, 1) vertical kernels; bv: (C,) biases.
    Returns:
        s: (B, C, H, W), same dtype as x.
    """
    c = x.shape[1]
    k0 = w0.shape[-1]
    a0 = F.conv2d(x, w0, b0, padding=k0 // 2, groups=c)
    total = a0
    for w_h, b_h, w_v, b_v in zip(wh, bh, wv, bv):
        k = w_h.shape[-1]
        t = F.conv2d(a0, w_h, b_h, padding=(0, k // 2), groups=c)
        total = total + F.conv2d(t, w_v, b_v, padding=(k // 2, 0), groups=c)
    return total
