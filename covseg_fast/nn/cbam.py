"""CBAM (Woo et al. 2018) as in Jongchan/attention-module (MODELS.md §2.6).

Channel gate: σ(MLP(avgpool x) + MLP(maxpool x)) ⊙ x, MLP = Linear(C→C/r) → ReLU → Linear(C/r→C), biased.
Spatial gate: σ(BN(conv7×7([max_c, mean_c]))) ⊙ x′ with a bias-free conv and BN(1, momentum 0.01).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.cbam import cbam as _cbam_fused


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C) pre-sigmoid channel gate."""
        return self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate_logits(x))[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # [max, mean]
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel gate then spatial gate. (B, C, H, W) → (B, C, H, W).

    Args:
        channels: C.
        reduction: MLP reduction r (hidden = max(1, C // r)).
        spatial_kernel: k of the k×k spatial conv.
        zero_spatial_bn: init the spatial BN weight to 0 (the reference ResNet's init: gate starts at 0.5).
        fused: use the fused op when one serves (False forces the reference composition).
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7,
                 zero_spatial_bn: bool = True, fused: bool = True):
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate(spatial_kernel)
        self.fused = fused
        for m in self.channel_gate.mlp:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.spatial_gate.conv.weight, mode="fan_out")
        if zero_spatial_bn:
            nn.init.zeros_(self.spatial_gate.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return self.spatial_gate(self.channel_gate(x))
        fc1, fc2 = self.channel_gate.mlp[0], self.channel_gate.mlp[2]
        sg = self.spatial_gate
        # Fused ops for the three passes over x; the MLP, 7×7 conv and this very BatchNorm2d module stay in
        # PyTorch, so training/eval behaviour and running-statistic updates are nn.BatchNorm2d's own.
        return _cbam_fused(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, sg.conv.weight, sg.bn)
