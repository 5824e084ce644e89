"""Ref-Net building blocks (MODELS.md §2.4, §4): CBR, context exploration, Focus (= CEM), edge attention.

- ``ContextExploration`` (PFNet ``Context_Exploration_Block``): four chained branches
  reduce (k_r×k_r) → local k_i×k_i → dilated 3×3 (d_i), each CBR; in_i = r_i + dc_{i−1};
  output CBR 1×1 over concat(dc_1..dc_4). Ref-Net text: k_r = 3 (default); PFNet code: 1.
- ``Focus`` (PFNet ``Focus`` = one Ref-Net CEM): F1 = U(CBR7×7(y)); a = σ(U(m));
  fp = CE(x·a), fn = CE(x·(1−a)); F2 = BR(F1 − α fp); F_out = BR(F2 + β fn); map = conv7×7(F_out).
  α, β start at 1; U is bilinear ×2 with align_corners=True (PFNet), no residual map.
- ``PlainFuse``: the decoder step used when CEMs are switched off (Table 4 ablation rows without
  CEM): F_out = CBR3×3(x + F1), map = conv7×7(F_out). A choice; the paper does not describe it.
- ``EdgeAttention`` (Inf-Net edge branch on f2, §4.2): ``inf`` = CB1×1 → CB3×3 → CB3×3 (features)
  → CB3×3 → 1 (logit), no ReLU anywhere (Inf-Net BasicConv2d quirk); ``single`` = one conv 3×3 → 1.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, kernel: int = 3, dilation: int = 1, bias: bool = True) -> nn.Sequential:
    """conv k×k ('same' padding, dilation d) → BN → ReLU. Keys: ``0`` conv, ``1`` BN."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, dilation * (kernel - 1) // 2, dilation, bias=bias),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def cb(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    """Inf-Net BasicConv2d as run: conv (bias=False) → BN, no ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, (kernel - 1) // 2, bias=False), nn.BatchNorm2d(cout))


def up2(x: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Bilinear ×2."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)


def resize_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize to ``size`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class ContextExploration(nn.Module):
    """PFNet context-exploration block: (B, C, h, w) → (B, C, h, w), branch width C // 4.

    Args:
        channels: C (divisible by 4).
        reduce_kernel: k_r of the channel reductions (3 = Ref-Net text, 1 = PFNet code).
        kernels: local kernels k_i; dilations: d_i of the 3×3 dilated convs.
    """

    def __init__(self, channels: int, reduce_kernel: int = 3, kernels: Sequence[int] = (1, 3, 5, 7),
                 dilations: Sequence[int] = (1, 2, 4, 8)):
        super().__init__()
        if channels % 4:
            raise ValueError(f"ContextExploration: channels must be divisible by 4, got {channels}")
        if len(kernels) != len(dilations):
            raise ValueError("ContextExploration: kernels and dilations must have the same length")
        c = channels // 4
        self.reduce = nn.ModuleList(cbr(channels, c, reduce_kernel) for _ in kernels)
        self.local = nn.ModuleList(cbr(c, c, k) for k in kernels)
        self.dilated = nn.ModuleList(cbr(c, c, 3, dilation=d) for d in dilations)
        self.fusion = cbr(c * len(kernels), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        prev = None
        for reduce, local, dilated in zip(self.reduce, self.local, self.dilated):
            inp = reduce(x) if prev is None else reduce(x) + prev
            prev = dilated(local(inp))
            outs.append(prev)
        return self.fusion(torch.cat(outs, 1))


class Focus(nn.Module):
    """One Ref-Net CEM (PFNet Focus). forward(x, y, m) → (F_out (B, C_cur, h, w), map logits (B, 1, h, w)).

    x: current level (B, C_cur, h, w); y: higher features (B, C_high, h/2, w/2); m: higher map (B, 1, h/2, w/2).
    """

    def __init__(self, c_cur: int, c_high: int, reduce_kernel: int = 3, dilations: Sequence[int] = (1, 2, 4, 8),
                 align_corners: bool = True):
        super().__init__()
        self.up = cbr(c_high, c_cur, 7)
        self.fp = ContextExploration(c_cur, reduce_kernel, dilations=dilations)
        self.fn = ContextExploration(c_cur, reduce_kernel, dilations=dilations)
        self.alpha = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.ones(1))
        self.bn1 = nn.BatchNorm2d(c_cur)
        self.bn2 = nn.BatchNorm2d(c_cur)
        self.output_map = nn.Conv2d(c_cur, 1, 7, 1, 3)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        up = resize_to(self.up(y), size, self.align_corners)
        a = torch.sigmoid(resize_to(m, size, self.align_corners))
        fp = self.fp(x * a)
        fn = self.fn(x * (1 - a))
        r1 = F.relu(self.bn1(up - self.alpha * fp))
        r2 = F.relu(self.bn2(r1 + self.beta * fn))
        return r2, self.output_map(r2)


class PlainFuse(nn.Module):
    """Decoder step without CEM: F_out = CBR3×3(x + U(CBR7×7(y))), map = conv7×7(F_out). m is unused."""

    def __init__(self, c_cur: int, c_high: int, align_corners: bool = True):
        super().__init__()
        self.up = cbr(c_high, c_cur, 7)
        self.fuse = cbr(c_cur, c_cur, 3)
        self.output_map = nn.Conv2d(c_cur, 1, 7, 1, 3)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fuse(x + resize_to(self.up(y), x.shape[-2:], self.align_corners))
        return out, self.output_map(out)


class EdgeAttention(nn.Module):
    """Edge branch on f2. forward(f2) → (edge features (B, E, h, w), edge logits (B, 1, h, w)).

    ``head="inf"``: E = 64 features from the Inf-Net stack; ``head="single"``: one conv 3×3 → 1 and the
    features are the logit itself (E = 1). ``out_channels`` gives E.
    """

    def __init__(self, in_channels: int, mid: int = 64, head: str = "inf"):
        super().__init__()
        if head not in ("inf", "single"):
            raise ValueError(f"EdgeAttention: head must be 'inf' or 'single', got {head!r}")
        self.head = head
        if head == "inf":
            self.edge_conv1 = cb(in_channels, mid, 1)
            self.edge_conv2 = cb(mid, mid, 3)
            self.edge_conv3 = cb(mid, mid, 3)
            self.edge_conv4 = cb(mid, 1, 3)
            self.out_channels = mid
        else:
            self.edge_conv = nn.Conv2d(in_channels, 1, 3, 1, 1)
            self.out_channels = 1

    def forward(self, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head == "single":
            logit = self.edge_conv(f2)
            return logit, logit
        feat = self.edge_conv3(self.edge_conv2(self.edge_conv1(f2)))
        return feat, self.edge_conv4(feat)


class EdgeFuse(nn.Module):
    """reduce_i′ = CBR3×3(C + E → C)(concat(reduce_i, resize(E_feat))) (§4.2, ``edge.fuse=concat``)."""

    def __init__(self, channels: int, edge_channels: int):
        super().__init__()
        self.conv = cbr(channels + edge_channels, channels, 3)

    def forward(self, x: torch.Tensor, edge_feat: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, resize_to(edge_feat, x.shape[-2:])], 1))
