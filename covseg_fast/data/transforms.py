"""Item- and batch-level transforms for slice datasets (no normalisation here: the models'
``registry.prepare_input`` does it).

An item transform is ``t(item, generator=None) -> item`` on the dict items of
:class:`~covseg_fast.data.slices.SliceDataset` (``image`` (1,H,W), ``mask`` (1,H,W), ``labels``
(H,W), optional ``edge`` (1,H,W)). Random transforms draw only from ``generator`` (a
``torch.Generator``), so a fixed seed gives the same result.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Compose", "Resize", "infnet_resize", "msa_unet_resize", "RandomFlip", "RandomRotate90", "RandomRotation",
           "resize_item", "multiscale_size", "multiscale_sizes", "rescale_batch", "MULTISCALE_RATES"]

MULTISCALE_RATES = (0.75, 1.0, 1.25)
_SPATIAL_FLOAT = ("image", "mask", "edge")


def _uniform(generator: Optional[torch.Generator]) -> float:
    return float(torch.rand((), generator=generator))


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


def _interp(x: torch.Tensor, size: tuple[int, int], mode: str, align_corners: Optional[bool] = None,
            antialias: bool = False) -> torch.Tensor:
    """Resize a (C, H, W) or (B, C, H, W) float tensor."""
    squeeze = x.dim() == 3
    x4 = x[None] if squeeze else x
    if mode == "nearest":
        y = F.interpolate(x4, size=size, mode="nearest")
    else:
        y = F.interpolate(x4, size=size, mode=mode, align_corners=align_corners, antialias=antialias)
    return y[0] if squeeze else y


def resize_item(item: dict[str, Any], size: int | Sequence[int], mask_mode: str = "nearest",
                antialias: bool = True) -> dict[str, Any]:
    """Resize one item: image bilinear (align_corners=False), mask/edge ``mask_mode``
    ("nearest" keeps binary masks binary; "bilinear" for soft labels, as Inf-Net), labels nearest."""
    if mask_mode not in ("nearest", "bilinear"):
        raise ValueError(f"mask_mode must be 'nearest' or 'bilinear', got {mask_mode!r}")
    size = _as_size(size)
    out = dict(item)
    if tuple(item["image"].shape[-2:]) == size:
        return out
    out["image"] = _interp(item["image"], size, "bilinear", False, antialias).clamp_(0, 1)
    for key in ("mask", "edge"):
        if key in item:
            aa = antialias and mask_mode == "bilinear"
            out[key] = _interp(item[key], size, mask_mode, False if mask_mode == "bilinear" else None, aa).clamp_(0, 1)
    if "labels" in item:
        out["labels"] = _interp(item["labels"][None].float(), size, "nearest")[0].round().long()
    return out


class Resize:
    """Resize items to ``size`` (see :func:`resize_item`)."""

    def __init__(self, size: int | Sequence[int], mask_mode: str = "nearest", antialias: bool = True) -> None:
        self.size = _as_size(size)
        self.mask_mode = mask_mode
        self.antialias = antialias
        resize_item({"image": torch.zeros(1, 1, 1)}, 1, mask_mode)  # validates mask_mode

    def __call__(self, item: dict[str, Any], generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        return resize_item(item, self.size, self.mask_mode, self.antialias)


def _apply_spatial(item: dict[str, Any], fn) -> dict[str, Any]:
    out = dict(item)
    for key in (*_SPATIAL_FLOAT, "labels"):
        if key in item:
            out[key] = fn(item[key])
    return out


class RandomFlip:
    """Flip left-right with probability ``p_horizontal`` and up-down with ``p_vertical``."""

    def __init__(self, p_horizontal: float = 0.5, p_vertical: float = 0.0) -> None:
        self.p_h, self.p_v = p_horizontal, p_vertical

    def __call__(self, item: dict[str, Any], generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        flip_h = _uniform(generator) < self.p_h
        flip_v = _uniform(generator) < self.p_v
        dims = [d for d, f in ((-1, flip_h), (-2, flip_v)) if f]
        if not dims:
            return dict(item)
        return _apply_spatial(item, lambda t: t.flip(dims))


class RandomRotate90:
    """Rotate by k·90° with k uniform in {0, 1, 2, 3} (lossless)."""

    def __call__(self, item: dict[str, Any], generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        k = int(torch.randint(0, 4, (), generator=generator))
        if k == 0:
            return dict(item)
        return _apply_spatial(item, lambda t: torch.rot90(t, k, dims=(-2, -1)))


class RandomRotation:
    """Rotate by an angle uniform in [−degrees, degrees] about the centre, with probability ``p``.

    Image (and soft masks with ``mask_mode="bilinear"``) bilinear, binary masks and labels nearest;
    outside pixels are 0. Output size equals input size.
    """

    def __init__(self, degrees: float = 15.0, p: float = 0.5, mask_mode: str = "nearest") -> None:
        if degrees < 0:
            raise ValueError(f"degrees must be ≥ 0, got {degrees}")
        self.degrees, self.p, self.mask_mode = float(degrees), p, mask_mode

    def __call__(self, item: dict[str, Any], generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        apply = _uniform(generator) < self.p
        angle = (2 * _uniform(generator) - 1) * self.degrees
        if not apply or angle == 0:
            return dict(item)
        h, w = item["image"].shape[-2:]
        a = math.radians(angle)
        # rotation in pixel units, expressed in normalised coordinates (aspect ratio aware)
        theta = torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0],
                              [math.sin(a) * w / h, math.cos(a), 0.0]], dtype=torch.float32)
        grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)

        def warp(t: torch.Tensor, mode: str) -> torch.Tensor:
            y = F.grid_sample(t[None].float(), grid.to(t.device), mode=mode, padding_mode="zeros", align_corners=False)
            return y[0]

        out = dict(item)
        out["image"] = warp(item["image"], "bilinear")
        for key in ("mask", "edge"):
            if key in item:
                out[key] = warp(item[key], self.mask_mode)
        if "labels" in item:
            out["labels"] = warp(item["labels"][None], "nearest")[0].round().long()
        return out


def infnet_resize(size: int = 352) -> Resize:
    """Ref-Net/Inf-Net training input (MODELS.md §4.4): image, GT and edge resized bilinear, GT not
    re-binarised; no augmentation in the reference."""
    return Resize(size, mask_mode="bilinear")


def msa_unet_resize(size: int = 256) -> Resize:
    """MSA-UNet training input (MODELS.md §3.5): masks resized nearest (so they stay binary)."""
    return Resize(size, mask_mode="nearest")


class Compose:
    """Apply item transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, item: dict[str, Any], generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        for t in self.transforms:
            item = t(item, generator)
        return item


def multiscale_size(base: int, rate: float, multiple: int = 32) -> int:
    """Inf-Net training size: ``int(round(base·rate/multiple)·multiple)`` (352 → 256, 352, 448)."""
    return int(round(base * rate / multiple) * multiple)


def multiscale_sizes(base: int = 352, rates: Sequence[float] = MULTISCALE_RATES, multiple: int = 32) -> list[int]:
    """Sizes for each rate, e.g. [256, 352, 448] for base 352."""
    return [multiscale_size(base, r, multiple) for r in rates]


def rescale_batch(batch: dict[str, Any], size: int | Sequence[int]) -> dict[str, Any]:
    """Rescale a collated batch to ``size`` as the Inf-Net/Ref-Net multi-scale loop does:
    image, mask and edge bilinear with align_corners=True (masks become soft at borders and are
    not re-binarised), labels nearest. Returns a new dict (the input is unchanged)."""
    size = _as_size(size)
    out = dict(batch)
    if tuple(batch["image"].shape[-2:]) == size:
        return out
    for key in _SPATIAL_FLOAT:
        if key in batch:
            out[key] = F.interpolate(batch[key].float(), size=size, mode="bilinear", align_corners=True)
    if "labels" in batch:
        out["labels"] = F.interpolate(batch["labels"][:, None].float(), size=size, mode="nearest")[:, 0].long()
    return out
