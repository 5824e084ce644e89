"""Multi-scale attention module of MSA-UNet (MODELS.md §3.2).

Default (the paper's module, §11 A1 ``wrapper="none"``):

    s  = a0 + Σ_i v_i(h_i(a0)),  a0 = dw_{5×5}(x)          (MSCA strip branches, §2.5)
    m  = conv1×1(s);   m′ = CBAM(m);   out = x + m′ ⊙ x

Options of §3.2, each off by default:
    (a) wrapper="segnext": u = GELU(proj_1(BN(x))),  out = x + proj_2(CBAM(conv1×1(s(u))) ⊙ u)
    (b) post_norm=True:    out ← ReLU(BN(out))
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..ops.reference.strip_conv import strip_conv as strip_conv_reference
from ..ops.strip_conv import strip_conv as strip_conv_fused
from .cbam import CBAM

WRAPPERS = ("none", "segnext")


def segnext_normal_(conv: nn.Conv2d) -> None:
    """SegNeXt's from-scratch conv init: weight ~ N(0, √(2 / fan_out)), fan_out = kh·kw·C_out / groups; bias 0.

    Source: Visual-Attention-Network/SegNeXt@c87bcae:mmseg/models/backbones/mscan.py, ``MSCAN.init_weights``,
    which applies it to every nn.Conv2d of the backbone: the depthwise MSCA convs, the 1×1 ``conv3`` of
    ``AttentionModule`` and the 1×1 ``proj_1``/``proj_2`` of ``SpatialAttention`` (MODELS.md §2.5).
    """
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


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
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                segnext_normal_(m)

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
        square_kernel, strip_kernels: MSCA kernel sizes (5; 7, 11, 21), all odd.
        reduction: CBAM MLP reduction.
        fused: use fused ops where they serve; False runs the pure-PyTorch reference everywhere.
        wrapper: "none" (the paper's module) or "segnext": MODELS.md §3.2 option (a), SegNeXt's
            ``SpatialAttention`` inside a pre-norm residual, BN → proj_1 (1×1) → GELU → [strip convs → 1×1 →
            CBAM → ⊙ u] → proj_2 (1×1) → + x. The shortcut is the module input x, as in SegNeXt's ``Block``;
            SegNeXt's layer scale and the inner ``SpatialAttention`` shortcut (+ BN(x)) are not part of the
            option. Adds 2C² + 4C parameters (two biased 1×1 convs, one BN).
        post_norm: MODELS.md §3.2 option (b), BN + ReLU on the output (adds 2C parameters).
        zero_spatial_bn: CBAM's spatial BN γ starts at 0 (MODELS.md §2.6, default on); False keeps γ = 1.

    Init: SegNeXt's normal init for every conv of the MSCA part and of the wrapper (``segnext_normal_``), CBAM
    per §2.6, BN weight 1 / bias 0. Parameters without options: 25C + 78C + 7C (depthwise, default kernels)
    + C² + C (1×1) + CBAM; 1,294,500 at C = 1024.
    """

    def __init__(self, channels: int, square_kernel: int = 5, strip_kernels: Sequence[int] = (7, 11, 21),
                 reduction: int = 16, fused: bool = True, wrapper: str = "none", post_norm: bool = False,
                 zero_spatial_bn: bool = True):
        super().__init__()
        if wrapper not in WRAPPERS:
            raise ValueError(f"MSA: wrapper must be one of {WRAPPERS}, got {wrapper!r}")
        self.wrapper, self.post_norm = wrapper, bool(post_norm)
        self.strip = StripConv(channels, square_kernel, strip_kernels, fused=fused)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.cbam = CBAM(channels, reduction, zero_spatial_bn=zero_spatial_bn, fused=fused)
        if wrapper == "segnext":
            self.norm = nn.BatchNorm2d(channels)
            self.proj_1 = nn.Conv2d(channels, channels, 1)
            self.act = nn.GELU()
            self.proj_2 = nn.Conv2d(channels, channels, 1)
        if self.post_norm:
            self.post_bn = nn.BatchNorm2d(channels)
            self.post_act = nn.ReLU()
        for conv in (self.proj, getattr(self, "proj_1", None), getattr(self, "proj_2", None)):
            if conv is not None:
                segnext_normal_(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.act(self.proj_1(self.norm(x))) if self.wrapper == "segnext" else x
        y = self.cbam(self.proj(self.strip(u))) * u
        out = x + (self.proj_2(y) if self.wrapper == "segnext" else y)
        return self.post_act(self.post_bn(out)) if self.post_norm else out
