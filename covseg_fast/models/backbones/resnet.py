"""ResNet-50 (torchvision layout, v1.5: stride on the 3×3) as an f1..f5 feature extractor.

State_dict keys equal torchvision's ``resnet50`` (``conv1.weight``, ``layer1.0.downsample.0.weight``,
``fc.weight``, ...), so a torchvision ImageNet file loads with :func:`load_resnet50_weights`.
torchvision itself is not needed. Taps (Ref-Net paper, Table 2 "ResNet" backbone):

    f1 relu(bn1(conv1)) 64 × H/2, f2 layer1 256 × H/4, f3 layer2 512 × H/8,
    f4 layer3 1024 × H/16, f5 layer4 2048 × H/32
"""
from __future__ import annotations

import torch
from torch import nn

from .weights import init_resnet_style, load_backbone_weights

RESNET50_FILE = "resnet50-0676ba61.pth"


class Bottleneck(nn.Module):
    """torchvision Bottleneck: 1×1 → 3×3/stride → 1×1 (×4), + (downsampled) identity, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50; ``forward(x)`` → [f1, f2, f3, f4, f5]. ``with_classifier`` keeps ``fc`` for strict loading."""

    channels = (64, 256, 512, 1024, 2048)

    def __init__(self, with_classifier: bool = True, num_classes: int = 1000):
        super().__init__()
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3, 1)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 2)
        self.layer4 = self._make_layer(512, 3, 2)
        self.with_classifier = with_classifier
        if with_classifier:
            self.fc = nn.Linear(2048, num_classes)
        init_resnet_style(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self._inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        mods = [Bottleneck(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * 4
        mods += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → [f1 (64, H/2), f2 (256, H/4), f3 (512, H/8), f4 (1024, H/16), f5 (2048, H/32)]."""
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [f1, f2, f3, f4, self.layer4(f4)]


def load_resnet50_weights(model: ResNet50, path: str) -> ResNet50:
    """Load a torchvision ``resnet50`` state_dict file (strict; ``fc.*`` dropped for a classifier-less model).

    Raises FileNotFoundError / ValueError as :func:`~.weights.load_backbone_weights`.
    """
    return load_backbone_weights(model, path, RESNET50_FILE, drop_prefixes=() if model.with_classifier else ("fc.",))
