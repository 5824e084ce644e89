"""Plain U-Net baseline (milesial/Pytorch-UNet parts; MODELS.md §3.1 "UNT") and its shared blocks.

    inc = DoubleConv(C_in → c0);  down_k = MaxPool2 → DoubleConv(c_{k−1} → c_k), k = 1..4
    up_k = ConvTranspose 2×2/s2 (or bilinear ×2) → concat skip → DoubleConv;  outc = conv 1×1 c0 → C_out

Widths c = base·[1, 2, 4, 8, 16]. DoubleConv = [conv3×3/p1 bias=F, BN, ReLU]×2.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelSpec, register_model


class DoubleConv(nn.Module):
    """[conv 3×3/p1 (bias=F), BN, ReLU] × 2: (B, C_in, H, W) → (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: Optional[int] = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """Decoder step: (B, C, h, w) + skip (B, C/2, 2h, 2w) → (B, C/2, 2h, 2w).

    ``bilinear=False``: ConvTranspose 2×2/s2 C→C/2, concat (C), DoubleConv(C → C/2).
    ``bilinear=True``: bilinear ×2 (align_corners=True), concat (3C/2), DoubleConv(3C/2 → C/2, mid C/2).
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels + out_channels, out_channels, out_channels)
        else:
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
            self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def widths(base: int) -> list[int]:
    """Channel widths of the five levels: base·[1, 2, 4, 8, 16]."""
    if base < 1:
        raise ValueError(f"base width must be ≥ 1, got {base}")
    return [base * m for m in (1, 2, 4, 8, 16)]


def check_input(x: torch.Tensor, in_channels: int, multiple: int, pad_input: bool, name: str):
    """Validate (B, C_in, H, W); pad bottom/right to a multiple when allowed. Returns (x, (H, W))."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name}: expected input (B, {in_channels}, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        if not pad_input:
            raise ValueError(f"{name}: H and W must be multiples of {multiple}, got {h}×{w} "
                             f"(resize the input, or build the model with pad_input=True)")
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


class UNet(nn.Module):
    """Plain U-Net: (B, in_channels, H, W) → logits (B, C_out, H, W), H and W multiples of 16.

    Args:
        in_channels: 3 (grey slice repeated, ImageNet-normalised; the MODELS.md §3.1 default) or 1.
        num_classes: 1 → one binary logit channel; K ≥ 2 → K class logits.
        base: width multiplier c0 (64 paper-size; 16/32 for CPU). Widths base·[1, 2, 4, 8, 16].
        bilinear: bilinear upsampling instead of ConvTranspose.
        pad_input: pad H, W bottom/right to multiples of 16 (zeros) and crop the output back;
            otherwise other sizes raise ValueError.
    Parameters (in_channels=3, num_classes=1, ConvTranspose): base 64 → 31,037,633; base 16 → 1,942,577;
    base 8 → 486,553.
    Output: eval → logits tensor (B, C_out, H, W); train → {"out": logits, "aux": []}.
    """

    size_multiple = 16

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base: int = 64, bilinear: bool = False,
                 pad_input: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"UNet: num_classes must be ≥ 1, got {num_classes}")
        c = widths(base)
        self.in_channels, self.num_classes, self.pad_input = in_channels, num_classes, pad_input
        self.inc = DoubleConv(in_channels, c[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(c[k], c[k + 1])) for k in range(4))
        self.ups = nn.ModuleList(Up(c[k + 1], c[k], bilinear) for k in reversed(range(4)))
        self.outc = nn.Conv2d(c[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor):
        x, (h, w) = check_input(x, self.in_channels, self.size_multiple, self.pad_input, type(self).__name__)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        logits = self.outc(y)[..., :h, :w]
        return {"out": logits, "aux": []} if self.training else logits


def _unet_criterion(num_classes: int = 1, ignore_index=None, **_unused):
    """BCE (binary) or CE (K classes) on the main output; U-Net has no aux outputs."""
    from ..losses import MSAUNetLoss

    return MSAUNetLoss(num_classes=num_classes, aux_weight=0.0, ignore_index=ignore_index)


register_model(ModelSpec(
    name="unet", builder=UNet, criterion=_unet_criterion, in_channels=3, input_size=(256, 256),
    normalization="imagenet", size_multiple=16,
    description="plain U-Net baseline (max pooling, double 3×3 convs, widths base·[1,2,4,8,16])"))
