"""Test-time flip averaging: the model's probabilities averaged over flipped copies of each slice.

``hflip`` runs the identity and the left–right flip (2 forward passes); ``flips`` adds the up–down and
the double flip (4 passes). The probabilities (sigmoid for one output channel, softmax for several)
are un-flipped, averaged, and returned as logits again (logit of the mean; log of the mean for
softmax), so a wrapped model drops in wherever logits are expected: ``covseg evaluate --tta``,
``covseg screen --tta``. Measured gain and cost: docs/tta.md.
"""
from __future__ import annotations

import torch
from torch import nn

TTA_MODES = ("none", "hflip", "flips")
_FLIPS = {"hflip": [(), (-1,)], "flips": [(), (-1,), (-2,), (-2, -1)]}
_EPS = 1e-6


class FlipAveraged(nn.Module):
    """Wrap ``model`` (eval ``model(x)`` → logits (B, C, H, W)) to average its probabilities over flips.

    The registry attributes (``covseg_name``, ``covseg_config``) are passed through.
    """

    def __init__(self, model: nn.Module, mode: str = "hflip") -> None:
        super().__init__()
        if mode not in _FLIPS:
            raise ValueError(f"unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_MODES)}")
        self.model = model
        self.mode = mode
        for attr in ("covseg_name", "covseg_config"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in _FLIPS[self.mode]:
            logits = self.model(x.flip(dims) if dims else x)
            if isinstance(logits, dict):
                logits = logits["out"]
            logits = logits.float()
            prob = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
            prob = prob.flip(dims) if dims else prob
            total = prob if total is None else total + prob
        mean = total / len(_FLIPS[self.mode])
        if mean.shape[1] == 1:
            return torch.logit(mean, eps=_EPS)
        return torch.log(mean.clamp_min(_EPS))


def with_tta(model: nn.Module, mode: str | None) -> nn.Module:
    """``model`` itself for ``mode`` None/"none", else :class:`FlipAveraged`."""
    if mode in (None, "none"):
        return model
    return FlipAveraged(model, mode)
