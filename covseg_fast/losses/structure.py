"""Ref-Net / Inf-Net losses (MODELS.md §4.3, §5.1–5.2): structure loss, edge loss, edge targets, criterion.

- :func:`structure_loss`: weighted IoU + BCE with w = 1 + 5·|avgpool31(g) − g|; ``bce_mode``
  "reference" (plain mean BCE, how the reference repos run) or "weighted"; ``fused`` picks the
  ``covseg::structure_loss`` op (Triton on CUDA) or the pure-PyTorch autograd reference.
- :func:`edge_loss`: plain BCE-with-logits, mean over the batch.
- :func:`edge_from_mask`: edge target = morphological gradient dilate(g) − erode(g) (3×3 by default)
  of the binarised mask, for data without stored edge maps (Inf-Net ships Canny edges instead).
- :class:`RefNetLoss`: L = L_edge + Σ_{M5, M4, M3, M2} L_seg, all weights 1 (§11 A14).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..ops import structure_loss as fused_structure_loss
from ..ops.reference import structure_loss as ref

SIDE_KEYS = ("m5", "m4", "m3", "m2")


def structure_loss(logits: torch.Tensor, target: torch.Tensor, bce_mode: str = "reference", iou_smooth: float = 1.0,
                   fused: bool = True) -> torch.Tensor:
    """Scalar fp32 structure loss of (B, 1, H, W) logits against a (B, 1, H, W) [0, 1] target.

    Raises ValueError / TypeError for bad shapes, dtypes or modes (same checks on both paths).
    """
    if fused:
        return fused_structure_loss(logits, target, bce_mode=bce_mode, iou_smooth=iou_smooth)
    from ..ops.structure_loss import _validate

    _validate(logits, target, bce_mode, iou_smooth)
    return ref.structure_loss(logits, target, bce_mode, iou_smooth).mean()


def edge_loss(edge_logits: torch.Tensor, edge_target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits, mean over all pixels of the batch, computed in fp32."""
    if edge_logits.shape != edge_target.shape:
        raise ValueError(f"edge_loss: logits {tuple(edge_logits.shape)} and target {tuple(edge_target.shape)} differ")
    return F.binary_cross_entropy_with_logits(edge_logits.float(), edge_target.float())


def edge_from_mask(mask: torch.Tensor, kernel: int = 3, threshold: float = 0.5) -> torch.Tensor:
    """Edge map of a (B, 1, H, W) mask: dilate(m) − erode(m) with a k×k square, m = (mask > threshold).

    Returns a {0, 1} float tensor of the mask's shape (dtype float32 unless the mask is float64).
    """
    if mask.dim() != 4:
        raise ValueError(f"edge_from_mask: expected (B, 1, H, W), got {tuple(mask.shape)}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"edge_from_mask: kernel must be odd and ≥ 1, got {kernel}")
    m = (mask > threshold).to(torch.float64 if mask.dtype == torch.float64 else torch.float32)
    pad = kernel // 2
    dilated = F.max_pool2d(m, kernel, 1, pad)
    eroded = -F.max_pool2d(-m, kernel, 1, pad)
    return dilated - eroded


class RefNetLoss:
    """Ref-Net training criterion: ``(outputs, batch) -> (loss, {part: detached 0-dim tensor})`` (convert the
    parts when logging: a float() of each would stop a GPU once per part and step).

    ``outputs`` is the train-mode dict of :class:`~covseg_fast.models.refnet.RefNet` (side outputs
    ``m5, m4, m3, m2`` at the input size, plus ``edge`` when the edge branch is on); ``batch`` holds
    ``mask`` (B, 1, H, W) in [0, 1] and optionally ``edge`` (else derived with :func:`edge_from_mask`).

    Args:
        bce_mode, iou_smooth, fused: passed to :func:`structure_loss`.
        side_weights: weights of (M5, M4, M3, M2); equal by default (Inf-Net), PFNet uses (1, 1, 2, 4).
        edge_weight: weight of the edge loss.
        edge_kernel: square size of the morphological gradient when edges are derived.
    """

    def __init__(self, bce_mode: str = "reference", iou_smooth: float = 1.0, fused: bool = True,
                 side_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), edge_weight: float = 1.0,
                 edge_kernel: int = 3):
        if bce_mode not in ref.BCE_MODES:
            raise ValueError(f"RefNetLoss: bce_mode must be one of {ref.BCE_MODES}, got {bce_mode!r}")
        if len(side_weights) != 4:
            raise ValueError(f"RefNetLoss: side_weights needs 4 values (M5, M4, M3, M2), got {len(side_weights)}")
        self.bce_mode, self.iou_smooth, self.fused = bce_mode, iou_smooth, fused
        self.side_weights = tuple(float(w) for w in side_weights)
        self.edge_weight, self.edge_kernel = float(edge_weight), edge_kernel

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]):
        mask = batch["mask"]
        total = None
        parts: dict[str, torch.Tensor] = {}
        for key, weight in zip(SIDE_KEYS, self.side_weights):
            if key not in outputs:
                raise KeyError(f"RefNetLoss: outputs lack side output {key!r} (is the model in train mode?)")
            if outputs[key].shape != mask.shape:
                raise ValueError(f"RefNetLoss: {key} {tuple(outputs[key].shape)} vs mask {tuple(mask.shape)}")
            part = structure_loss(outputs[key], mask, self.bce_mode, self.iou_smooth, self.fused)
            parts[key] = part.detach()
            total = weight * part if total is None else total + weight * part
        if "edge" in outputs:
            edge_t = batch.get("edge")
            if edge_t is None:
                edge_t = edge_from_mask(mask, self.edge_kernel)
            part = edge_loss(outputs["edge"], edge_t)
            parts["edge"] = part.detach()
            total = total + self.edge_weight * part
        parts["loss"] = total.detach()
        return total, parts
