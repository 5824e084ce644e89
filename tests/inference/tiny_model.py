"""A tiny real model registered for the screening tests (2 conv layers, 1-channel logits)."""
from __future__ import annotations

import torch
from torch import nn

from covseg_fast.models.registry import ModelSpec, get_model, register_model, save_checkpoint

NAME = "tiny_screen_test"


class TinyNet(nn.Module):
    """conv3×3(C→4) → ReLU → conv3×3(4→1): logits (B, 1, H, W) at the input size."""

    def __init__(self, in_channels: int = 1, hidden: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1)

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


def make_checkpoint(path: str, bright_is_infection: bool = True, input_info: dict | None = None) -> str:
    """Save a deterministic TinyNet whose logit is high where the windowed grey value is high.

    With ``bright_is_infection`` the net computes roughly 40·(grey − 0.55): voxels brighter than about
    -425 HU in the default lung window become "infection", so tests get non-empty masks from real CT.
    """
    torch.manual_seed(0)
    model = get_model(NAME)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        if bright_is_infection:
            model.conv1.weight[0, 0, 1, 1] = 1.0
            model.conv2.weight[0, 0, 1, 1] = 40.0
            model.conv2.bias.fill_(-40.0 * 0.55)
    save_checkpoint(path, model, {"input": input_info} if input_info is not None else None)
    return path
