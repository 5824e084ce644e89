"""Position / channel attention and the attention position module (MODELS.md §2.2–2.3).

Defaults follow PFNet (= Ref-Net's APM): plain softmax(XXᵀ) channel attention, γ initialised to 1,
channel attention then position attention in sequence. ``variant="danet"`` gives DANet's
softmax(−E) channel attention with γ initialised to 0.

``fused=True`` runs ``covseg::position_attention`` (flash-style, O(N·C) memory on the Triton backend, so
the APM fits at any level, e.g. 128×128 maps) and ``covseg::channel_attention`` with γ·out + x fused into
its epilogue; ``fused=False`` runs the eager reference (same parameters and state-dict keys).

Both modules return x's dtype: γ·out + x is computed in fp32 and rounded once (an fp32 γ no longer
promotes a bf16 map to fp32). Position attention keeps γ·out + x as one elementwise op after the fused
op: its backward needs the attention output anyway, so fusing would save one read of it (≈ 1–3 % of
the op's time, README "Attention ops: rules").
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.channel_attention import channel_attention as fused_channel_attention
from ..ops.position_attention import position_attention as fused_position_attention
from ..ops.reference.attention import channel_attention, position_attention


def _gamma_init(variant: str) -> float:
    if variant not in ("pfnet", "danet"):
        raise ValueError(f"attention variant must be 'pfnet' or 'danet', got {variant!r}")
    return 1.0 if variant == "pfnet" else 0.0


class PositionAttention(nn.Module):
    """Y = γ · PAM(X) + X with q, k = 1×1 convs to C // 8 and v = 1×1 conv to C (all biased). (B,C,H,W) → same."""

    def __init__(self, channels: int, variant: str = "pfnet", qk_reduction: int = 8, scale: float = 1.0,
                 fused: bool = True):
        super().__init__()
        cq = max(1, channels // qk_reduction)
        self.query_conv = nn.Conv2d(channels, cq, 1)
        self.key_conv = nn.Conv2d(channels, cq, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1,), _gamma_init(variant)))
        self.scale = scale
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).flatten(2)
        k = self.key_conv(x).flatten(2)
        v = self.value_conv(x).flatten(2)
        attend = fused_position_attention if self.fused else position_attention
        out = attend(q, k, v, self.scale).view(b, c, h, w)
        return (self.gamma * out + x).to(x.dtype)


class ChannelAttention(nn.Module):
    """Y = γ · softmax(±XXᵀ) X + X over channels, γ and the residual fused into the op. (B, C, H, W) → same
    (the fused path keeps a channels_last input channels_last)."""

    def __init__(self, channels: int | None = None, variant: str = "pfnet", fused: bool = True):
        super().__init__()
        self.variant = variant
        self.gamma = nn.Parameter(torch.full((1,), _gamma_init(variant)))
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attend = fused_channel_attention if self.fused else channel_attention
        return attend(x.flatten(2), self.variant, self.gamma).view(b, c, h, w)


class APM(nn.Module):
    """Attention position module (PFNet `Positioning`): F = SA(CA(X)); map M = conv7×7(F) → 1 channel.

    Returns (F, M): features (B, C, H, W) and map logits (B, 1, H, W).
    """

    def __init__(self, channels: int, variant: str = "pfnet", fused: bool = True):
        super().__init__()
        self.cab = ChannelAttention(channels, variant, fused=fused)
        self.sab = PositionAttention(channels, variant, fused=fused)
        self.map = nn.Conv2d(channels, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.sab(self.cab(x))
        return features, self.map(features)
