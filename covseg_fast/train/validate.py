"""Validation during training: per-image Dice and IoU of the infection mask at a fixed threshold.

A small, self-contained score for choosing the best checkpoint; the full evaluation protocol
(threshold sweeps, S/E-measure, MAE) lives in ``covseg_fast.metrics`` and ``covseg evaluate``.
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


@torch.no_grad()
def validation_sums(forward: Callable[[dict], torch.Tensor], batches: Iterable[dict],
                    threshold: float = 0.5) -> torch.Tensor:
    """Sum of per-image Dice, sum of IoU and image count over ``batches`` as a float64 tensor (3,)
    (sums, so ranks can all-reduce them). ``forward(batch)`` returns eval-mode logits at mask size."""
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in batches:
        logits = forward(batch)
        mask = batch["mask"]
        if logits.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"model output {tuple(logits.shape)} does not match mask {tuple(mask.shape)}")
        dice, iou = dice_iou(infection_probability(logits), mask.to(logits.device), threshold)
        sums += torch.stack([dice.sum(), iou.sum(), torch.tensor(float(dice.numel()))]).double().cpu()
    return sums
