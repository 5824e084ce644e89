"""Validation during training: every metric of both papers on the validation set, each epoch.

``dice`` and ``iou`` are per-image means of the mask at ``val_threshold`` (``prob >= t``); the rest come
from :class:`covseg_fast.metrics.MetricAccumulator` on each image at the mask's size (MODELS.md §7–8):
the Inf-Net table (256-threshold means of Dice/Sen/Spec/E_φ on the min–max map, S_α, MAE) and
Precision/Recall/Specificity/mIoU at σ(z) > 0.5. All are means over images, so per-rank sums
all-reduce exactly. ``covseg evaluate`` gives the same numbers at each GT's original size.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def infection_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits → (B, H, W) infection probability: sigmoid for C = 1, else
    1 − softmax background (channel 0), i.e. the probability of any infection class."""
    if logits.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) logits, got {tuple(logits.shape)}")
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1.0 - torch.softmax(logits, dim=1)[:, 0]


def dice_iou(prob: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of ``prob >= threshold`` against ``mask >= 0.5``.

    Args:
        prob: (B, H, W) probabilities; mask: (B, H, W) or (B, 1, H, W) reference in [0, 1].
    Returns:
        two (B,) float tensors; an image where both prediction and reference are empty scores 1.
    """
    if mask.dim() == 4:
        mask = mask[:, 0]
    if prob.shape != mask.shape:
        raise ValueError(f"dice_iou: prediction {tuple(prob.shape)} and mask {tuple(mask.shape)} differ")
    pred = (prob >= threshold).flatten(1).float()
    ref = (mask >= 0.5).flatten(1).float()
    inter = (pred * ref).sum(1)
    total = pred.sum(1) + ref.sum(1)
    union = total - inter
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(inter), inter / union.clamp_min(1))
    return dice, iou


# history key (without "val_") -> MetricAccumulator row key; lower is better only for "mae"
ACCUMULATED = {"infnet_dice": "mean_dice", "sen": "mean_sensitivity", "spec": "mean_specificity",
               "e_phi": "mean_emeasure", "s_alpha": "s_measure", "mae": "mae", "precision": "precision@0.5",
               "recall": "recall@0.5", "specificity": "specificity@0.5", "miou": "miou@0.5"}
VAL_KEYS = ("dice", "iou", *ACCUMULATED)


@torch.no_grad()
def validation_metric_sums(forward: Callable[[dict], torch.Tensor], batches: Iterable[dict],
                           threshold: float = 0.5) -> torch.Tensor:
    """Sums over images of every :data:`VAL_KEYS` metric, then the image count, as a float64 tensor
    (sums, so ranks can all-reduce them). ``forward(batch)`` returns eval-mode logits at mask size."""
    from ..metrics import MetricAccumulator

    acc = MetricAccumulator("infnet")
    sums = torch.zeros(len(VAL_KEYS) + 1, dtype=torch.float64)
    for batch in batches:
        logits = forward(batch).float()
        mask = batch["mask"]
        if logits.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"model output {tuple(logits.shape)} does not match mask {tuple(mask.shape)}")
        mask = mask.to(logits.device)
        dice, iou = dice_iou(infection_probability(logits), mask, threshold)
        for i in range(logits.shape[0]):
            row = acc.update(logits[i], mask[i, 0] >= 0.5)
            values = [float(dice[i]), float(iou[i])] + [row[k] for k in ACCUMULATED.values()]
            sums += torch.tensor(values + [1.0], dtype=torch.float64)
    return sums
