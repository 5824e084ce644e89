"""Multi-scale attention module of MSA-UNet (MODELS.md §3.2).

    s  = a0 + Σ_i v_i(h_i(a0)),  a0 = dw_{5×5}(x)          (MSCA strip branches, §2.5)
    m  = conv1×1(s);   m′ = CBAM(m);   out = x + m′ ⊙ x
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..ops.reference.strip_conv import strip_conv as strip_conv_reference
from ..ops.strip_conv import strip_conv as strip_conv_fused
from .cbam import CBAM


class StripConv(nn.Module):
    """Depthwise k0×k0 conv plus strip pairs (1×k then k×1) on its output, summed. (B,C,H,W) → same.

    Parameters keep SegNeXt's names: conv0, conv{i}_1 (1×k), conv{i}_2 (k×1).
    """

    def __init__(self, channels: int, square_kernel: int = 5, strip_kernels: Sequence[int] = (7, 11, 21),
                 fused: bool = True):
        super().__init__()
        for k in (square_kernel, *strip_kernels):
            if k % 2 == 0 or k < 1:
                raise ValueError(f"StripConv: kernel sizes must be odd and positive, got {k}")
        self.fused = fused
        self.strip_kernels = tuple(strip_kernels)
        self.conv0 = nn.Conv2d(channels, channels, square_kernel, padding=square_kernel // 2, groups=channels)
        for i, k in enumerate(strip_kernels):
            setattr(self, f"conv{i}_1", nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels))
            setattr(self, f"conv{i}_2", nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # MSCAN.init_weights: N(0, sqrt(2 / fan_out)), fan_out = kh·kw·C_out / groups; bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)

    def branch_params(self):
        n = len(self.strip_kernels)
        wh = [getattr(self, f"conv{i}_1").weight for i in range(n)]
        bh = [getattr(self, f"conv{i}_1").bias for i in range(n)]
        wv = [getattr(self, f"conv{i}_2").weight for i in range(n)]
        bv = [getattr(self, f"conv{i}_2").bias for i in range(n)]
        return wh, bh, wv, bv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wh, bh, wv, bv = self.branch_params()
        # The fused op picks its backend itself (Triton on CUDA, the reference on plain CPU).
        fn = strip_conv_fused if self.fused else strip_conv_reference
        return fn(x, self.conv0.weight, self.conv0.bias, wh, bh, wv, bv)


class MSA(nn.Module):
    """Multi-scale attention: strip convs → 1×1 → CBAM → ⊙ x → + x. (B, C, H, W) → (B, C, H, W).

    Args:
        channels: C.
        square_kernel, strip_kernels: MSCA kernel sizes (5; 7, 11, 21).
        reduction: CBAM MLP reduction.
        fused: use fused ops where they serve; False runs the pure-PyTorch reference everywhere.
    """

    def __init__(self, channels: int, square_kernel: int = 5, strip_kernels: Sequence[int] = (7, 11, 21),
                 reduction: int = 16, fused: bool = True):
        super().__init__()
        self.strip = StripConv(channels, square_kernel, strip_kernels, fused=fused)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.cbam = CBAM(channels, reduction, fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.cbam(self.proj(self.strip(x)))
        return x + gate * x
