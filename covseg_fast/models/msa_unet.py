"""MSA-UNet (Yang & Chen; MODELS.md §3): U-Net whose encoder stages are pairs of MSA modules.

    inc     = DoubleConv(C_in → c0)                                       c0 × H × W
    down_k  = conv 3×3/s2/p1 (bias=F) + BN + ReLU, c_{k−1} → c_k           (§11 A3; or 2×2/s2; or MaxPool)
    stage_k = MSA(c_k) → MSA(c_k)                                          c_k × H/2^k     (k = 1..4)
    aux_k   = conv 3×3 c_k → c_k/4 (bias=F), BN, ReLU, conv 1×1 → K_aux    K_aux × H/2^k   (§3.3, §11 A4)
              on the stage_k output (or on the down_k output)
    up_1..4 = ConvTranspose 2×2/s2 + concat skip + DoubleConv (or bilinear) ; outc = conv 1×1 c0 → C_out

Skips: inc, stage_1, stage_2, stage_3; bottleneck stage_4. Widths c = base·[1, 2, 4, 8, 16].
"""
from __future__ import annotations

import torch
from torch import nn

from ..losses import MSAUNetLoss
from ..nn import MSA
from ..nn.msa import WRAPPERS
from .registry import ModelSpec, register_model
from .unet import DoubleConv, Up, check_input, widths


AUX_POSITIONS = ("stage_out", "down_out")


class AuxHead(nn.Module):
    """conv 3×3/p1 C→C_mid (bias=F), BN, ReLU, conv 1×1 C_mid→K (bias=T): (B, C, h, w) → logits (B, K, h, w).

    C_mid = max(1, C // reduction); reduction 4 is MODELS.md §3.3's choice (C/4, PSPNet-style), 1 gives C_mid = C.
    The paper's softmax is left to the loss (log_softmax inside the CPP-KL term).
    """

    def __init__(self, channels: int, num_classes: int, reduction: int = 4):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"AuxHead: reduction must be ≥ 1, got {reduction}")
        mid = max(1, channels // reduction)
        self.conv = nn.Conv2d(channels, mid, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.cls = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.relu(self.bn(self.conv(x))))


def downsample(in_channels: int, out_channels: int, strided: bool, kernel: int = 3) -> nn.Sequential:
    """Strided conv k×k/s2 (k = 3: p1, the §11 A3 default; k = 2: p0) + BN + ReLU,
    or (ablation, ``strided=False``) MaxPool2 → conv 3×3/p1 + BN + ReLU."""
    if strided:
        if kernel not in (2, 3):
            raise ValueError(f"downsample: down_kernel must be 3 (3×3/s2/p1) or 2 (2×2/s2), got {kernel}")
        conv = nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=1 if kernel == 3 else 0, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    if kernel != 3:
        raise ValueError(f"downsample: down_kernel={kernel} needs strided=True (max pooling uses a 3×3 conv)")
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
        strided: strided-conv downsampling (kernel ``down_kernel``); False (ablation) uses MaxPool2 + conv3×3
            + BN + ReLU.
        bilinear: bilinear ×2 upsampling in the decoder instead of ConvTranspose 2×2.
        pad_input: pad H, W bottom/right with zeros to multiples of 16 and crop the logits back
            (aux maps stay at the padded size / 2^k; the loss pads labels with background to match);
            otherwise other sizes raise ValueError.
        fused: passed to every MSA (and its CBAM): fused kernels where they serve, False = reference.
        down_kernel: 3 → strided conv 3×3/s2/p1 (§11 A3, default); 2 → conv 2×2/s2 (the §3.1 alternative).
        aux_reduction: aux head width C_mid = C_k // aux_reduction (4: §3.3's C/4; 1: C_mid = C_k).
        aux_pos: "stage_out" → aux_k on the stage_k output (after its MSAs, §11 A4 default);
            "down_out" → right after down_k.
        msa_wrapper: "none" (the paper's MSA, §11 A1) or "segnext" (§3.2 option (a); see ``nn.MSA``).
        msa_post_norm: BN + ReLU after each MSA's residual (§3.2 option (b)).
        cbam_zero_bn: CBAM's spatial BN γ starts at 0 (§2.6 init, default on); False starts it at 1.
        reduction: CBAM MLP reduction (16).
        square_kernel, strip_kernels: MSCA kernel sizes (5; 7, 11, 21), all odd (§2.5).
    The KL reduction of the aux loss is a criterion option: ``get_criterion("msa_unet", kl_reduction=...)``.

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
                 fused: bool = True, reduction: int = 16, strip_kernels: tuple = (7, 11, 21),
                 square_kernel: int = 5, down_kernel: int = 3, aux_reduction: int = 4, aux_pos: str = "stage_out",
                 msa_wrapper: str = "none", msa_post_norm: bool = False, cbam_zero_bn: bool = True):
        super().__init__()
        if aux_pos not in AUX_POSITIONS:
            raise ValueError(f"MSAUNet: aux_pos must be one of {AUX_POSITIONS}, got {aux_pos!r}")
        if msa_wrapper not in WRAPPERS:
            raise ValueError(f"MSAUNet: msa_wrapper must be one of {WRAPPERS}, got {msa_wrapper!r}")
        if num_classes < 1:
            raise ValueError(f"MSAUNet: num_classes must be ≥ 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"MSAUNet: in_channels must be ≥ 1, got {in_channels}")
        c = widths(base)
        self.in_channels, self.num_classes, self.pad_input = in_channels, num_classes, pad_input
        self.aux_pos = aux_pos
        self.aux_classes = 2 if num_classes == 1 else num_classes
        self.inc = DoubleConv(in_channels, c[0])
        self.downs = nn.ModuleList(downsample(c[k], c[k + 1], strided, down_kernel) for k in range(4))
        if msa:
            msa_config = dict(square_kernel=square_kernel, strip_kernels=tuple(strip_kernels), reduction=reduction,
                              fused=fused, wrapper=msa_wrapper, post_norm=msa_post_norm, zero_spatial_bn=cbam_zero_bn)
            self.stages = nn.ModuleList(nn.Sequential(*(MSA(c[k + 1], **msa_config) for _ in range(2)))
                                        for k in range(4))
        else:
            self.stages = nn.ModuleList(DoubleConv(c[k + 1], c[k + 1]) for k in range(4))
        self.aux_heads = (nn.ModuleList(AuxHead(c[k + 1], self.aux_classes, aux_reduction) for k in range(4))
                          if aux else None)
        self.ups = nn.ModuleList(Up(c[k + 1], c[k], bilinear) for k in reversed(range(4)))
        self.outc = nn.Conv2d(c[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor):
        x, (h, w) = check_input(x, self.in_channels, self.size_multiple, self.pad_input, type(self).__name__)
        skips = [self.inc(x)]
        aux = []
        for k, (down, stage) in enumerate(zip(self.downs, self.stages)):
            d = down(skips[-1])
            y = stage(d)
            if self.training and self.aux_heads is not None:
                aux.append(self.aux_heads[k](y if self.aux_pos == "stage_out" else d))
            skips.append(y)
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        logits = self.outc(y)[..., :h, :w]
        return {"out": logits, "aux": aux} if self.training else logits


def _msa_unet_criterion(num_classes: int = 1, aux_weight: float = 1.0, fused: bool = True, ignore_index=None,
                        scales=None, kl_reduction: str = "pixel_mean", targets: str = "auto"):
    """MSAUNetLoss: BCE/CE + aux_weight · Σ_k KL(CPP_{2^k}(labels) ‖ softmax(aux_k)) (MODELS.md §3.4).

    kl_reduction: "pixel_mean" (÷ B·h_k·w_k, §11 A5 default), "batchmean" (÷ B, PyTorch's) or "sum".
    targets: "auto", "pooled" (one class_prob_pool call for every scale) or "per_scale" (losses/cpp_kl.py).
    """
    return MSAUNetLoss(num_classes=num_classes, aux_weight=aux_weight, scales=scales, fused=fused,
                       ignore_index=ignore_index, kl_reduction=kl_reduction, targets=targets)


register_model(ModelSpec(
    name="msa_unet", builder=MSAUNet, criterion=_msa_unet_criterion, in_channels=3, input_size=(256, 256),
    normalization="imagenet", size_multiple=16,
    description="MSA-UNet (Yang & Chen): MSA encoder stages, strided-conv downsampling, CPP-KL aux heads"))
