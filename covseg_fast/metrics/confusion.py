"""Binary confusion-matrix metrics (threshold 0.5): Dice, Sen/Recall, Spec, Precision, IoU, mIoU.

Definitions follow MODELS.md §7.4 (MSA-UNet-style reporting): per image, with the rule
0/0 = 1 when prediction and ground truth are both empty (for the class the metric is about),
otherwise a zero denominator gives 0. ``global_scores`` applies the same formulas to the
confusion matrix summed over images (the "dataset-global" variant).
"""
from __future__ import annotations

import torch

__all__ = ["confusion_counts", "scores_from_counts", "binarize"]


def binarize(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``prob > threshold`` (strict, as σ(z) > 0.5 in §7.4); any shape; returns bool."""
    return prob > threshold


def confusion_counts(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image confusion counts.

    Args:
        pred: (B, H, W) or (H, W) bool (binarised prediction).
        gt: same shape, bool (or anything where nonzero means foreground).
    Returns:
        (B, 4) int64 [TP, FP, FN, TN] ((4,) for 2-D input).
    Raises:
        ValueError: shapes differ.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"confusion_counts: prediction {tuple(pred.shape)} and GT {tuple(gt.shape)} differ")
    squeeze = pred.dim() == 2
    p = pred.bool().reshape(pred.shape[0] if not squeeze else 1, -1)
    g = gt.bool().reshape(p.shape)
    tp = (p & g).sum(1)
    fp = (p & ~g).sum(1)
    fn = (~p & g).sum(1)
    tn = (~p & ~g).sum(1)
    out = torch.stack([tp, fp, fn, tn], dim=1).to(torch.int64)
    return out[0] if squeeze else out


def _ratio(num: torch.Tensor, den: torch.Tensor, both_empty: torch.Tensor) -> torch.Tensor:
    num = num.double()
    den = den.double()
    safe = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))
    return torch.where(den > 0, safe, both_empty.double())


def scores_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics from confusion counts.

    Args:
        counts: (..., 4) [TP, FP, FN, TN] (from :func:`confusion_counts`, or their sum over images
            for the dataset-global variant).
    Returns:
        dict of float64 tensors of shape ``counts.shape[:-1]``: ``dice``, ``precision``,
        ``recall`` (= ``sensitivity``), ``specificity``, ``iou`` (foreground), ``iou_bg``,
        ``miou`` = (iou + iou_bg)/2, ``accuracy``.
    """
    tp, fp, fn, tn = counts.unbind(-1)
    fg_empty = (tp + fp + fn) == 0  # prediction and GT foreground both empty
    bg_empty = (tn + fp + fn) == 0  # prediction and GT background both empty
    dice = _ratio(2 * tp, 2 * tp + fp + fn, fg_empty)
    precision = _ratio(tp, tp + fp, fg_empty)
    recall = _ratio(tp, tp + fn, fg_empty)
    specificity = _ratio(tn, tn + fp, bg_empty)
    iou = _ratio(tp, tp + fp + fn, fg_empty)
    iou_bg = _ratio(tn, tn + fp + fn, bg_empty)
    accuracy = (tp + tn).double() / (tp + fp + fn + tn).double().clamp_min(1)
    return {"dice": dice, "precision": precision, "recall": recall, "sensitivity": recall,
            "specificity": specificity, "iou": iou, "iou_bg": iou_bg, "miou": (iou + iou_bg) / 2,
            "accuracy": accuracy}
