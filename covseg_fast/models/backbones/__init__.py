"""Backbones returning the feature taps f1..f5 (strides 2, 4, 8, 16, 32) with official state_dict keys."""
from __future__ import annotations

from torch import nn

from .res2net import Res2Net, load_res2net_weights, res2net50_v1b_26w_4s
from .resnet import ResNet50, load_resnet50_weights
from .vgg import VGG16, load_vgg16_weights
from .weights import load_backbone_weights, sha256_of

BACKBONES = ("res2net50", "resnet50", "vgg16")


def build_backbone(name: str, with_classifier: bool = False) -> nn.Module:
    """A randomly initialised backbone by name; ``.channels`` gives the f1..f5 widths."""
    if name == "res2net50":
        return res2net50_v1b_26w_4s(with_classifier=with_classifier)
    if name == "resnet50":
        return ResNet50(with_classifier=with_classifier)
    if name == "vgg16":
        return VGG16(with_classifier=with_classifier)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def load_pretrained(backbone: nn.Module, path: str, verify_sha256: bool = False) -> nn.Module:
    """Load user-supplied ImageNet weights into a backbone built by :func:`build_backbone`."""
    if isinstance(backbone, Res2Net):
        return load_res2net_weights(backbone, path, verify_sha256=verify_sha256)
    if isinstance(backbone, ResNet50):
        return load_resnet50_weights(backbone, path)
    if isinstance(backbone, VGG16):
        return load_vgg16_weights(backbone, path)
    raise TypeError(f"load_pretrained: unsupported backbone {type(backbone).__name__}")


__all__ = ["BACKBONES", "Res2Net", "ResNet50", "VGG16", "build_backbone", "load_backbone_weights",
           "load_pretrained", "load_res2net_weights", "load_resnet50_weights", "load_vgg16_weights",
           "res2net50_v1b_26w_4s", "sha256_of"]
