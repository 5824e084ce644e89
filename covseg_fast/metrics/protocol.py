"""Turning model logits into the maps that are scored (MODELS.md §8.2–8.3, A18).

``infnet``: logits resized to the GT size (bilinear, align_corners=False) → probability →
min–max (÷ (max − min + 1e-8), a constant map becomes 0) → uint8 round trip (round) → exact
min–max again (what MATLAB's ``mapminmax`` sees after the PNG round trip).
``threshold``: logits resized to the GT size → probability, nothing else.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["PROTOCOLS", "probability", "minmax", "infnet_map", "threshold_map", "score_map"]

PROTOCOLS = ("infnet", "threshold")


def probability(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits → (B, H, W) infection probability.

    C = 1: sigmoid; C ≥ 2: softmax, probability of "not background" (1 − p₀).
    """
    if logits.dim() != 4:
        raise ValueError(f"probability: expected (B, C, H, W) logits, got {tuple(logits.shape)}")
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1 - torch.softmax(logits, dim=1)[:, 0]


def minmax(p: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-map min–max to [0, 1] over the last two dims: (p − min)/(max − min + eps); constant → 0."""
    lo = p.amin(dim=(-2, -1), keepdim=True)
    hi = p.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo + eps
    return torch.where(rng > 0, (p - lo) / torch.where(rng > 0, rng, 1), torch.zeros_like(p))


def _resize(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float()
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


def threshold_map(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, C, h, w) or (C, h, w) logits → (H, W) probability at GT size ``size``."""
    if logits.dim() == 3:
        logits = logits[None]
    return probability(_resize(logits, size))[0]


def infnet_map(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, C, h, w) or (C, h, w) logits → (H, W) map normalised as the Inf-Net protocol (§8.3 item 7)."""
    p = threshold_map(logits, size).double()
    p = minmax(p, eps=1e-8)
    p = torch.round(p * 255) / 255
    return minmax(p)


def score_map(logits: torch.Tensor, size: tuple[int, int], protocol: str) -> torch.Tensor:
    """The map that protocol ``protocol`` scores (see module docstring)."""
    if protocol == "infnet":
        return infnet_map(logits, size)
    if protocol == "threshold":
        return threshold_map(logits, size).double()
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
