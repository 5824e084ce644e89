"""Spec of the structure loss (MODELS.md §5.1; F3Net → PraNet → Inf-Net → PFNet).

Inputs: logits z (B, 1, H, W), target g (B, 1, H, W) in [0, 1] (soft allowed). All maths in fp32
(float64 stays float64):

    w    = 1 + 5·|A(g) − g|,  A = 31×31 box mean, stride 1, zero pad 15, divisor always 961
    bce  = max(z, 0) − z·g + log(1 + e^{−|z|})
    bce_mode "reference": ℓ_bce = mean over all B·H·W of bce (one scalar for the batch; the
                          reference repos' `reduce='none'` bug, §0.2)
    bce_mode "weighted":  ℓ_bce[b] = Σ w·bce / Σ w
    p = σ(z);  I[b] = Σ w·p·g;  U[b] = Σ w·(p + g)
    ℓ_iou[b] = 1 − (I + s)/(U − I + s)   (s = iou_smooth, 1 in Inf-Net/PraNet/F3Net, 0 in PFNet)
    loss[b] = ℓ_bce(+[b]) + ℓ_iou[b];  the loss is mean_b(loss[b]).

The target gets no gradient (w is a constant of g). Gradients (used by the backward op):
    ∂ℓ_iou/∂p = −[w·g·(U − I + s) − (I + s)·w·(1 − g)] / (U − I + s)²,  ∂p/∂z = p(1 − p)
    ∂ℓ_bce/∂z = (p − g)/(B·H·W)  (reference)   or   w·(p − g)/Σw  (weighted)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BCE_MODES = ("reference", "weighted")
BOX = 31


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def box_weight(target: torch.Tensor) -> torch.Tensor:
    """w = 1 + 5·|avgpool31(g) − g| (zero pad 15, count_include_pad) for (B, 1, H, W) → same, fp32/fp64."""
    g = _acc(target)
    return 1 + 5 * torch.abs(F.avg_pool2d(g, BOX, stride=1, padding=BOX // 2) - g)


def structure_loss_stats(logits: torch.Tensor, target: torch.Tensor, iou_smooth: float = 1.0):
    """Forward pass of the op: (per-sample loss pieces) without the bce-mode combination.

    Returns (w (B,1,H,W), stats (B, 5)) with stats columns [I, U, Σw, Σw·bce, Σbce], fp32 (fp64 for fp64 input).
    """
    z, g = _acc(logits), _acc(target)
    w = box_weight(target)
    bce = z.clamp_min(0) - z * g + torch.log1p(torch.exp(-z.abs()))
    p = torch.sigmoid(z)
    dims = (1, 2, 3)
    stats = torch.stack([(w * p * g).sum(dims), (w * (p + g)).sum(dims), w.sum(dims), (w * bce).sum(dims),
                         bce.sum(dims)], dim=1)
    return w, stats


def combine(stats: torch.Tensor, numel_per_sample: int, bce_mode: str, iou_smooth: float) -> torch.Tensor:
    """Per-sample loss (B,) from the stats of :func:`structure_loss_stats`."""
    inter, union = stats[:, 0], stats[:, 1]
    iou = 1 - (inter + iou_smooth) / (union - inter + iou_smooth)
    if bce_mode == "reference":
        bce = stats[:, 4].sum() / max(1, stats.shape[0] * numel_per_sample)
        bce = bce.expand_as(iou)
    elif bce_mode == "weighted":
        bce = stats[:, 3] / stats[:, 2]
    else:
        raise ValueError(f"structure_loss: bce_mode must be one of {BCE_MODES}, got {bce_mode!r}")
    return bce + iou


def structure_loss(logits: torch.Tensor, target: torch.Tensor, bce_mode: str = "reference",
                   iou_smooth: float = 1.0) -> torch.Tensor:
    """Differentiable per-sample structure loss (B,) fp32 (fp64 for fp64 input); take ``.mean()`` for L."""
    _, stats = structure_loss_stats(logits, target.detach(), iou_smooth)
    return combine(stats, logits[0].numel() if logits.shape[0] else 0, bce_mode, iou_smooth)


def structure_loss_backward(grad: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                            stats: torch.Tensor, bce_mode: str, iou_smooth: float) -> torch.Tensor:
    """Closed-form ∂(Σ_b grad[b]·loss[b])/∂logits, in the logits' dtype (maths in fp32/fp64)."""
    z, g, w = _acc(logits), _acc(target), weight
    gr = grad.to(w.dtype)
    p = torch.sigmoid(z)
    inter, union = stats[:, 0], stats[:, 1]
    den = union - inter + iou_smooth
    ca = (-gr * den / den**2).view(-1, 1, 1, 1)          # coefficient of w·g
    cb = (gr * (inter + iou_smooth) / den**2).view(-1, 1, 1, 1)  # coefficient of w·(1 − g)
    d_iou = w * (ca * g + cb * (1 - g)) * p * (1 - p)
    if bce_mode == "reference":
        d_bce = (gr.sum() / max(1, logits.numel())) * (p - g)
    else:
        d_bce = (gr / stats[:, 2]).view(-1, 1, 1, 1) * w * (p - g)
    return (d_iou + d_bce).to(logits.dtype)
