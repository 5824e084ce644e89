"""MSA-UNet (Yang & Chen; MODELS.md §3): U-Net whose encoder stages are pairs of MSA modules.

    inc     = DoubleConv(C_in → c0)                                       c0 × H × W
    down_k  = conv 3×3/s2/p1 (bias=F) + BN + ReLU, c_{k−1} → c_k           (§11 A3; or MaxPool2 + conv3×3 + BN + ReLU)
    stage_k = MSA(c_k) → MSA(c_k)                                          c_k × H/2^k     (k = 1..4)
    aux_k   = conv 3×3 c_k → c_k/4 (bias=F), BN, ReLU, conv 1×1 → K_aux    K_aux × H/2^k   (§3.3, §11 A4)
    up_1..4 = ConvTranspose 2×2/s2 + concat skip + DoubleConv (or bilinear) ; outc = conv 1×1 c0 → C_out

Skips: inc, stage_1, stage_2, stage_3; bottleneck stage_4. Widths c = base·[1, 2, 4, 8, 16].
"""
from __future__ import annotations

import torch
from torch import nn

from ..losses import MSAUNetLoss
from ..nn import MSA
from .registry import ModelSpec, register_model
from .unet import DoubleConv, Up, check_input, widths


class AuxHead(nn.Module):
    """conv 3×3/p1 C→C/4 (bias=F), BN, ReLU, conv 1×1 C/4→K (bias=T): (B, C, h, w) → logits (B, K, h, w).

    The paper's softmax is left to the loss (log_softmax inside the CPP-KL term).
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        mid = max(1, channels // 4)
        self.conv = nn.Conv2d(channels, mid, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.cls = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.relu(self.bn(self.conv(x))))


def downsample(in_channels: int, out_channels: int, strided: bool) -> nn.Sequential:
    """Strided conv 3×3/s2/p1 + BN + ReLU, or (ablation) MaxPool2 → conv 3×3/p1 + BN + ReLU."""
    if strided:
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    return nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MSAUNet(nn.Module):
    """MSA-UNet: (B, in_channels, H, W) → logits (B, C_out, H, W); H, W multiples of 16.

    Args:
        in_channels: 3 by default (grey CT slice repeated ×3, ImageNet-normalised: MODELS.md §3.1 choice); 1 allowed.
        num_classes: 1 → one binary logit channel, aux heads predict K_aux = 2; K ≥ 2 → K logits, aux K.
        base: width multiplier c0 (64 paper-size; 16/32 for CPU), widths base·[1, 2, 4, 8, 16].
        msa: two MSA modules per encoder stage; False (ablation) puts a DoubleConv(c_k → c_k) there.
        aux: build the four aux heads (train mode returns their logits); False drops them.
        strided: strided 3×3/s2 conv downsampling; False (ablation) uses MaxPool2 + conv3×3 + BN + ReLU.
        bilinear: bilinear ×2 upsampling in the decoder instead of ConvTranspose 2×2.
        pad_input: pad H, W bottom/right with zeros to multiples of 16 and crop the logits back
            (aux maps stay at the padded size / 2^k; the loss pads labels with background to match);
            otherwise other sizes raise ValueError.
        fused: passed to every MSA (and its CBAM): fused kernels where they serve, False = reference.
        reduction, strip_kernels: MSA options (CBAM MLP reduction 16; strips 7, 11, 21).

    Parameters (in_channels=3, num_classes=1, ConvTranspose, msa=aux=strided=True):
        base 64 → 25,199,961; base 32 → 6,411,329; base 16 → 1,658,805; base 8 → 442,991.
    Output shapes at input (B, 3, 256, 256): eval → logits (B, 1, 256, 256); train →
    {"out": (B, 1, 256, 256), "aux": [(B, 2, 128, 128), (B, 2, 64, 64), (B, 2, 32, 32), (B, 2, 16, 16)]}.
    Raises:
        ValueError: bad configuration, wrong input rank/channels, or H, W not multiples of 16 without pad_input.
    """

    size_multiple = 16

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base: int = 64, msa: bool = True,
                 aux: bool = True, strided: bool = True, bilinear: bool = False, pad_input: bool = False,
                 fused: bool = True, reduction: int = 16, strip_kernels: tuple = (7, 11, 21)):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MSAUNet: num_classes must be ≥ 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"MSAUNet: in_channels must be ≥ 1, got {in_channels}")
        c = widths(base)
        self.in_channels, self.num_classes, self.pad_input = in_channels, num_classes, pad_input
        self.aux_classes = 2 if num_classes == 1 else num_classes
        self.inc = DoubleConv(in_channels, c[0])
        self.downs = nn.ModuleList(downsample(c[k], c[k + 1], strided) for k in range(4))
        if msa:
            self.stages = nn.ModuleList(
                nn.Sequential(*(MSA(c[k + 1], reduction=reduction, strip_kernels=strip_kernels, fused=fused)
                                for _ in range(2))) for k in range(4))
        else:
            self.stages = nn.ModuleList(DoubleConv(c[k + 1], c[k + 1]) for k in range(4))
        self.aux_heads = nn.ModuleList(AuxHead(c[k + 1], self.aux_classes) for k in range(4)) if aux else None
        self.ups = nn.ModuleList(Up(c[k + 1], c[k], bilinear) for k in reversed(range(4)))
        self.outc = nn.Conv2d(c[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor):
        x, (h, w) = check_input(x, self.in_channels, self.size_multiple, self.pad_input, type(self).__name__)
        skips = [self.inc(x)]
        aux = []
        for k, (down, stage) in enumerate(zip(self.downs, self.stages)):
            y = stage(down(skips[-1]))
            if self.training and self.aux_heads is not None:
                aux.append(self.aux_heads[k](y))
            skips.append(y)
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        logits = self.outc(y)[..., :h, :w]
        return {"out": logits, "aux": aux} if self.training else logits


def _msa_unet_criterion(num_classes: int = 1, aux_weight: float = 1.0, fused: bool = True, ignore_index=None,
                        scales=None):
    """MSAUNetLoss: BCE/CE + aux_weight · Σ_k KL(CPP_{2^k}(labels) ‖ softmax(aux_k)) (MODELS.md §3.4)."""
    return MSAUNetLoss(num_classes=num_classes, aux_weight=aux_weight, scales=scales, fused=fused,
                       ignore_index=ignore_index)


register_model(ModelSpec(
    name="msa_unet", builder=MSAUNet, criterion=_msa_unet_criterion, in_channels=3, input_size=(256, 256),
    normalization="imagenet", size_multiple=16,
    description="MSA-UNet (Yang & Chen): MSA encoder stages, strided-conv downsampling, CPP-KL aux heads"))
