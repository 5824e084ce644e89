"""Ref-Net (Liu et al., Med Phys 2022; MODELS.md §4): backbone → EAM on f2, APM on f5, three CEMs.

Train mode returns ``{"out": M2↑, "m2": M2↑, "m3": M3↑, "m4": M4↑, "m5": M5↑, "edge": E↑}`` (logits at
the input size; ``edge`` only with the edge branch); eval mode returns the M2↑ logits (B, 1, H, W).

Switches cover the paper's ablations:
- Table 4 rows: ``use_eam``, ``use_apm``, ``use_cem`` (or ``ablation="backbone" | "eam" | "apm" | "cem" |
  "eam+apm" | "eam+cem" | "apm+cem" | "full"``). Without APM, M5 = conv7×7(reduce5) and F5 = reduce5;
  without CEM each decoder step is :class:`~covseg_fast.nn.refnet_blocks.PlainFuse`; without EAM there
  is no edge branch, fusion or edge loss.
- Table 3: ``apm_level`` ∈ {2, 3, 4, 5}: the APM moves to that level's reduced features (its output
  is the current-level input of the CEM there; its own map is then unused) and M5 comes from conv7×7.
- Table 2: ``backbone`` ∈ {"res2net50", "resnet50", "vgg16"}.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..losses.structure import RefNetLoss
from ..nn.attention import APM
from ..nn.refnet_blocks import EdgeAttention, EdgeFuse, Focus, PlainFuse, cbr, resize_to
from .backbones import build_backbone, load_pretrained
from .registry import ModelSpec, register_model

REDUCED = (64, 128, 256, 512)  # reduce2..reduce5 widths (§11 A11)
ABLATIONS = {
    "backbone": (False, False, False), "eam": (True, False, False), "apm": (False, True, False),
    "cem": (False, False, True), "eam+apm": (True, True, False), "eam+cem": (True, False, True),
    "apm+cem": (False, True, True), "full": (True, True, True),
}


class RefNet(nn.Module):
    """Ref-Net. forward(x (B, 3, H, W), H and W multiples of 32) → dict (train) or M2 logits (eval).

    Args:
        backbone: "res2net50" (default), "resnet50" or "vgg16".
        pretrained_backbone: optional path of the user-supplied ImageNet weights (never downloaded).
        verify_sha256: check the Res2Net file's sha256 prefix (3cf99910).
        use_eam / use_apm / use_cem / ablation: Table 4 switches (``ablation`` overrides the three).
        apm_level: where the APM sits (2..5; Table 3). apm_variant: "pfnet" (default) or "danet".
        edge_head: "inf" (Inf-Net 4-layer stack, default) or "single" (one conv 3×3 → 1).
        edge_fuse: "concat" (edge features concatenated into every CEM input) or "none".
        reduce_kernel: CE-block channel-reduction kernel (3 Ref-Net text, 1 PFNet code).
        dilations: CE-block dilation rates.
        focus_align_corners: align_corners of the ×2 upsamplings inside the CEMs (PFNet True).
        side_align_corners: align_corners of the side-output upsampling to the input size (Inf-Net False).
        fused: use fused ops where available (the APM's attention); False runs the pure-PyTorch references.
    Raises:
        ValueError: unknown backbone / ablation / option values.
    """

    def __init__(self, backbone: str = "res2net50", pretrained_backbone: Optional[str] = None,
                 verify_sha256: bool = False, use_eam: bool = True, use_apm: bool = True, use_cem: bool = True,
                 ablation: Optional[str] = None, apm_level: int = 5, apm_variant: str = "pfnet",
                 edge_head: str = "inf", edge_fuse: str = "concat", reduce_kernel: int = 3,
                 dilations: Sequence[int] = (1, 2, 4, 8), focus_align_corners: bool = True,
                 side_align_corners: bool = False, fused: bool = True):
        super().__init__()
        if ablation is not None:
            if ablation not in ABLATIONS:
                raise ValueError(f"RefNet: unknown ablation {ablation!r}; choose one of {sorted(ABLATIONS)}")
            use_eam, use_apm, use_cem = ABLATIONS[ablation]
        if apm_level not in (2, 3, 4, 5):
            raise ValueError(f"RefNet: apm_level must be 2, 3, 4 or 5, got {apm_level}")
        if edge_fuse not in ("concat", "none"):
            raise ValueError(f"RefNet: edge_fuse must be 'concat' or 'none', got {edge_fuse!r}")
        self.use_eam, self.use_apm, self.use_cem = use_eam, use_apm, use_cem
        self.apm_level = apm_level if use_apm else None
        self.side_align_corners = side_align_corners
        self.backbone = build_backbone(backbone, with_classifier=False)
        if pretrained_backbone is not None:
            load_pretrained(self.backbone, pretrained_backbone, verify_sha256=verify_sha256)
        ch = self.backbone.channels  # f1..f5
        # reduce2..reduce5: CBR 3×3 with bias (PFNet cr1..cr4)
        self.reduce = nn.ModuleList(cbr(ch[i + 1], REDUCED[i], 3) for i in range(4))
        self.edge = EdgeAttention(ch[1], 64, edge_head) if use_eam else None
        self.edge_fuse = None
        if use_eam and edge_fuse == "concat":
            self.edge_fuse = nn.ModuleList(EdgeFuse(c, self.edge.out_channels) for c in REDUCED[:3])
        if self.apm_level is not None:
            self.apm = APM(REDUCED[self.apm_level - 2], apm_variant, fused=fused)
        if self.apm_level != 5:
            self.head5 = nn.Conv2d(REDUCED[3], 1, 7, 1, 3)
        # decoder steps for levels 2, 3, 4 (index 0 = level 2)
        if use_cem:
            self.decoder = nn.ModuleList(Focus(REDUCED[i], REDUCED[i + 1], reduce_kernel, dilations,
                                               focus_align_corners) for i in range(3))
        else:
            self.decoder = nn.ModuleList(PlainFuse(REDUCED[i], REDUCED[i + 1], focus_align_corners)
                                         for i in range(3))

    # The registry records get_model's config for checkpoints. The ImageNet file only initialises the
    # backbone; a checkpoint carries the trained weights, so load_model must not need that file again.
    _INIT_ONLY = ("pretrained_backbone", "verify_sha256")

    @property
    def covseg_config(self) -> dict:
        return self._covseg_config

    @covseg_config.setter
    def covseg_config(self, config: dict) -> None:
        self._covseg_config = {k: v for k, v in config.items() if k not in self._INIT_ONLY}

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        feats = self.backbone(x)
        reduced = [r(f) for r, f in zip(self.reduce, feats[1:])]  # levels 2..5
        edge_feat = edge_logit = None
        if self.edge is not None:
            edge_feat, edge_logit = self.edge(feats[1])
        if self.apm_level == 5:
            high, m = self.apm(reduced[3])
        else:
            high, m = reduced[3], self.head5(reduced[3])
        maps = {"m5": m}
        for level in (4, 3, 2):
            cur = reduced[level - 2]
            if self.edge_fuse is not None:
                cur = self.edge_fuse[level - 2](cur, edge_feat)
            if self.apm_level == level:
                cur = self.apm(cur)[0]
            high, m = self.decoder[level - 2](cur, high, m)
            maps[f"m{level}"] = m
        m2 = resize_to(maps["m2"], size, self.side_align_corners)
        if not self.training:
            return m2
        out = {"out": m2, "m2": m2}
        for key in ("m3", "m4", "m5"):
            out[key] = resize_to(maps[key], size, self.side_align_corners)
        if edge_logit is not None:
            out["edge"] = resize_to(edge_logit, size, self.side_align_corners)
        return out


def build_refnet(**config) -> RefNet:
    """Registry builder: ``get_model("refnet", **config)``."""
    return RefNet(**config)


register_model(ModelSpec(
    name="refnet", builder=build_refnet, criterion=RefNetLoss, in_channels=3, input_size=(352, 352),
    normalization="imagenet", size_multiple=32,
    description="Ref-Net (Res2Net-50 + edge attention + APM + 3 CEMs), Med Phys 2022",
))
