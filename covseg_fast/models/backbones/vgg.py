"""VGG16 (torchvision layout, no BN) as an f1..f5 feature extractor.

State_dict keys equal torchvision's ``vgg16`` (``features.0.weight`` ... ``features.28.weight``,
``classifier.0/3/6``), so a torchvision ImageNet file loads with :func:`load_vgg16_weights`.
Taps at strides 2..32, so the Ref-Net decoder is unchanged (a choice: the Ref-Net paper does not
say where it taps VGG16):

    f1 conv2_2 (features[8])  128 × H/2      f2 conv3_3 (features[15]) 256 × H/4
    f3 conv4_3 (features[22]) 512 × H/8      f4 conv5_3 (features[29]) 512 × H/16
    f5 pool5   (features[30]) 512 × H/32
"""
from __future__ import annotations

import torch
from torch import nn

from .weights import load_backbone_weights

VGG16_FILE = "vgg16-397923af.pth"
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# Indices into ``features`` whose outputs are f1..f5.
TAPS = (8, 15, 22, 29, 30)


class VGG16(nn.Module):
    """VGG16 features (+ optional classifier); ``forward(x)`` → [f1, f2, f3, f4, f5]."""

    channels = (128, 256, 512, 512, 512)

    def __init__(self, with_classifier: bool = False, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.with_classifier = with_classifier
        if with_classifier:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes),
            )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → [f1 (128, H/2), f2 (256, H/4), f3 (512, H/8), f4 (512, H/16), f5 (512, H/32)]."""
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


def load_vgg16_weights(model: VGG16, path: str) -> VGG16:
    """Load a torchvision ``vgg16`` state_dict file (strict; ``classifier.*`` dropped when the model has none).

    Raises FileNotFoundError / ValueError as :func:`~.weights.load_backbone_weights`.
    """
    return load_backbone_weights(model, path, VGG16_FILE,
                                 drop_prefixes=() if model.with_classifier else ("classifier.",))
