"""Spec of class-probability-preserving (CPP) pooling (MSA-UNet paper §2.3).

    out_s[b, k, i, j] = (1 / s²) · #{(u, v) in the s×s window (i, j) : labels[b, u, v] = k}

i.e. ``avg_pool2d(one_hot(labels), s)``. Rules every backend follows:

- the output of scale s is (B, K, H // s, W // s): rows/columns past the last
  full window are dropped, as ``avg_pool2d`` floors;
- pixels equal to ``ignore_index`` count for no class, and the divisor stays s²
  (their window's fractions then sum to less than 1);
- any other label outside [0, K) is an error (never a silent write).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def invalid_label_error(labels: torch.Tensor, num_classes: int, ignore_index: Optional[int]) -> Optional[str]:
    """A message naming the first offending label value, or None if all are valid."""
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if not bool(bad.any()):
        return None
    value = int(labels[bad].flatten()[0])
    allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
    return f"class_prob_pool: label value {value} is outside {allowed} ({int(bad.sum())} such pixels)"


def class_prob_pool(
    labels: torch.Tensor, num_classes: int, scales: Sequence[int], ignore_index: Optional[int] = None
) -> list[torch.Tensor]:
    """Per-class fractions of each s×s window, for every scale.

    Args:
        labels: (B, H, W) integer class map (uint8, int32 or int64).
        num_classes: K.
        scales: window sizes s ≥ 1.
        ignore_index: label value that counts for no class.
    Returns:
        One float32 tensor (B, K, H // s, W // s) per scale.
    Raises:
        ValueError: a label outside [0, K) that is not ``ignore_index``.
    """
    message = invalid_label_error(labels, num_classes, ignore_index)
    if message is not None:
        raise ValueError(message)
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    one_hot = (F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * valid.unsqueeze(1)).contiguous()
    return [F.avg_pool2d(one_hot, kernel_size=s, stride=s) for s in scales]
