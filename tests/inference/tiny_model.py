"""A tiny real model registered for the screening tests (2 conv layers, 1-channel or K-class logits)."""
from __future__ import annotations

import torch
from torch import nn

from covseg_fast.models.registry import ModelSpec, get_model, register_model, save_checkpoint

NAME = "tiny_screen_test"


class TinyNet(nn.Module):
    """conv3×3(C→4) → ReLU → conv3×3(4→K): logits (B, K, H, W) at the input size (K = ``num_classes``)."""

    def __init__(self, in_channels: int = 1, hidden: int = 4, num_classes: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, num_classes, 3, padding=1)

    def forward(self, x):
        out = self.conv2(torch.relu(self.conv1(x)))
        return out if not self.training else {"out": out}


def _criterion(**_):
    def crit(outputs, batch):
        loss = nn.functional.binary_cross_entropy_with_logits(outputs["out"], batch["mask"])
        return loss, {"bce": float(loss)}
    return crit


SPEC = register_model(ModelSpec(name=NAME, builder=TinyNet, criterion=_criterion, in_channels=1,
                                input_size=(64, 64), normalization="unit", size_multiple=1,
                                description="test-only tiny conv net"))


def make_checkpoint(path: str, bright_is_infection: bool = True, input_info: dict | None = None,
                    multiclass: bool = False, provenance: dict | None = None) -> str:
    """Save a deterministic TinyNet whose logit is high where the windowed grey value is high.

    With ``bright_is_infection`` the net computes roughly 40·(grey − 0.55): voxels brighter than about
    -425 HU in the default lung window become "infection", so tests get non-empty masks from real CT.
    With ``multiclass`` it has 3 classes (as ``covseg train --multiclass``): logits 0 (background),
    40·(grey − 0.55) (1, GGO) and 120·(grey − 0.8) (2, consolidation): in the default window class 1 from
    about -425 HU, class 2 above about 137 HU (grey 0.925).
    """
    torch.manual_seed(0)
    model = get_model(NAME, num_classes=3) if multiclass else get_model(NAME)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        if bright_is_infection:
            model.conv1.weight[0, 0, 1, 1] = 1.0
            out = 1 if multiclass else 0
            model.conv2.weight[out, 0, 1, 1] = 40.0
            model.conv2.bias[out] = -40.0 * 0.55
            if multiclass:
                model.conv2.weight[2, 0, 1, 1] = 120.0
                model.conv2.bias[2] = -120.0 * 0.8
    extra = {"input": input_info} if input_info is not None else {}
    if provenance is not None:
        extra["provenance"] = provenance
    save_checkpoint(path, model, extra or None)
    return path
