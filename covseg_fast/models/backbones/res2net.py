"""Res2Net-50 v1b 26w×4s (MODELS.md §2.1), with state_dict keys identical to the official release.

The official file ``res2net50_v1b_26w_4s-3cf99910.pth`` (Res2Net/Res2Net-PretrainedModels) loads
with ``strict=True`` (:func:`load_res2net_weights`); 25,718,352 parameters and 524 state_dict keys
with the classifier. The forward returns the taps f1..f5 used by Inf-Net and Ref-Net:

    f1 stem (conv1 → bn1 → relu, before maxpool)  64 × H/2
    f2 layer1 256 × H/4,  f3 layer2 512 × H/8,  f4 layer3 1024 × H/16,  f5 layer4 2048 × H/32
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .weights import init_resnet_style, load_backbone_weights

RES2NET50_FILE = "res2net50_v1b_26w_4s-3cf99910.pth"
# the published digest's ends and the file size (../shared/data/README.md; torch.hub checks only "3cf99910")
RES2NET50_SHA256_PREFIX = "3cf99910a0f1a4c9"
RES2NET50_SHA256_SUFFIX = "139c"
RES2NET50_SIZE = 103_197_949


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1×1 → 4 hierarchical 3×3 groups (width w each) → 1×1, + residual.

    ``stage=True`` (first block of a stage): groups are not chained and the last group is
    average-pooled (3×3/stride/p1) instead of passed through.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 26, scale: int = 4, stage: bool = False):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width, self.scale, self.stage = width, scale, stage
        self.nums = 1 if scale == 1 else scale - 1
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        if stage:
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.nums))
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, 1)
        pieces = []
        y = groups[0]
        for i in range(self.nums):
            inp = groups[i] if (i == 0 or self.stage) else y + groups[i]
            y = self.relu(self.bns[i](self.convs[i](inp)))
            pieces.append(y)
        if self.scale != 1:
            pieces.append(self.pool(groups[self.nums]) if self.stage else groups[self.nums])
        out = self.bn3(self.conv3(torch.cat(pieces, 1)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Res2Net(nn.Module):
    """Res2Net v1b (deep stem, avg-down shortcuts). ``forward(x)`` → [f1, f2, f3, f4, f5].

    Args:
        layers: blocks per stage ([3, 4, 6, 3] for Res2Net-50).
        with_classifier: keep ``fc`` (1000 classes) so the official file loads with strict=True;
            Ref-Net builds without it (the classifier is never used for segmentation).
    """

    channels = (64, 256, 512, 1024, 2048)

    def __init__(self, layers=(3, 4, 6, 3), base_width: int = 26, scale: int = 4, num_classes: int = 1000,
                 with_classifier: bool = True):
        super().__init__()
        self.base_width, self.scale, self._inplanes = base_width, scale, 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.with_classifier = with_classifier
        if with_classifier:
            self.fc = nn.Linear(512 * Bottle2neck.expansion, num_classes)
        init_resnet_style(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_ch = planes * Bottle2neck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_ch:
            downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(self._inplanes, out_ch, 1, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        mods = [Bottle2neck(self._inplanes, planes, stride, downsample, self.base_width, self.scale, stage=True)]
        self._inplanes = out_ch
        mods += [Bottle2neck(out_ch, planes, 1, None, self.base_width, self.scale) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → [f1 (B,64,H/2,W/2), f2 (B,256,H/4), f3 (B,512,H/8), f4 (B,1024,H/16), f5 (B,2048,H/32)]."""
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000); needs ``with_classifier=True``."""
        if not self.with_classifier:
            raise RuntimeError("Res2Net.classify: this model was built with with_classifier=False")
        f5 = self.forward(x)[-1]
        return self.fc(torch.flatten(f5.mean((2, 3), keepdim=True), 1))


def res2net50_v1b_26w_4s(with_classifier: bool = True) -> Res2Net:
    """Res2Net-50 v1b 26w×4s, randomly initialised (kaiming fan_out; BN 1/0)."""
    return Res2Net((3, 4, 6, 3), 26, 4, with_classifier=with_classifier)


def load_res2net_weights(model: Res2Net, path: str, verify_sha256: bool = False) -> Res2Net:
    """Load the user-supplied ``res2net50_v1b_26w_4s-3cf99910.pth`` into ``model`` (strict). No download.

    With ``verify_sha256`` the file must have the official size (103,197,949 bytes) and its sha256 hex
    digest must start with ``3cf99910a0f1a4c9`` and end with ``139c`` (the published parts of the digest;
    ``torch.hub`` checks only the ``3cf99910`` of the file name).
    ``fc.*`` keys are dropped when the model was built with ``with_classifier=False``; every other
    key must match exactly.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says where to put it / which flag to pass).
        ValueError: size or sha256 mismatch, or keys / shapes that do not fit.
    """
    return load_backbone_weights(
        model, path, expected_file=RES2NET50_FILE,
        sha256_prefix=RES2NET50_SHA256_PREFIX if verify_sha256 else None,
        sha256_suffix=RES2NET50_SHA256_SUFFIX if verify_sha256 else None,
        expected_size=RES2NET50_SIZE if verify_sha256 else None,
        drop_prefixes=() if model.with_classifier else ("fc.",),
    )
