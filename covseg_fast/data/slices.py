"""2-D slice datasets: image / mask folder pairs (COVID-SemiSeg layout and pseudo-labelled sets).

Layout (names configurable)::

    root/Imgs/<id>.jpg            8-bit grey (RGB is converted to grey)
    root/GT/<id>.png              mask {0,255} (or {0,1}); soft 0–255 with ``soft_masks=True``
    root/Edge/<id>.png            optional edge map {0,255} (``edges="Edge"``)
    root/GT-multiclass/<id>.png   optional palette PNG 0 bg, 1 GGO, 2 consolidation (``multiclass="GT-multiclass"``)

Files are matched by stem. Each item is a dict:
``image`` (1, H, W) float32 in [0, 1]; ``mask`` (1, H, W) float32 in [0, 1];
``labels`` (H, W) int64 (mask > 0.5, or the multiclass map); ``edge`` (1, H, W) float32 when
edges are given; ``id`` str; ``orig_size`` (H, W) tuple.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ._seeding import item_generator

log = logging.getLogger(__name__)

__all__ = ["SliceDataset", "DataError", "IMAGE_EXTS", "MASK_EXTS", "read_grey", "natural_key"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """Bad or inconsistent data; the message names the offending file."""


def natural_key(stem: str) -> tuple:
    """Sort key that orders "2" before "10" (and "a_2" before "a_10")."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem))


def _index_folder(folder: str, exts: Sequence[str], what: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise DataError(f"{what} folder not found: {folder}")
    out: dict[str, str] = {}
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in exts or name.startswith("."):
            continue
        if stem in out:
            raise DataError(f"{what} folder {folder}: two files with stem {stem!r} "
                            f"({os.path.basename(out[stem])}, {name})")
        out[stem] = os.path.join(folder, name)
    if not out:
        raise DataError(f"{what} folder {folder} holds no file with extension {'/'.join(exts)}")
    return out


def _read_array(path: str) -> tuple[np.ndarray, str]:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    return arr, mode


def read_grey(path: str) -> np.ndarray:
    """Read an image file as (H, W) uint8 grey (RGB → luminance, palette → its colours)."""
    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode not in ("L",) else im
            arr = np.asarray(im)
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit image, got {arr.dtype}")
    return arr


def _read_binary(path: str, what: str) -> np.ndarray:
    arr, _ = _read_array(path)
    if arr.ndim == 3:
        arr = arr[..., 0]  # as the toolbox: channel 1 of an RGB mask
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        return (arr > 127).astype(np.float32)
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.float32)
    raise DataError(f"{what} {path}: values {values[:8].tolist()}{'…' if len(values) > 8 else ''} "
                    f"outside the expected binary set {{0, 255}} (or {{0, 1}}); use soft_masks=True "
                    f"for soft labels")


def _read_soft(path: str) -> np.ndarray:
    arr, _ = _read_array(path)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        raise DataError(f"soft mask {path}: expected 8-bit values 0–255, got {arr.dtype}")
    return arr.astype(np.float32) / 255.0


def _read_classes(path: str, num_classes: int) -> np.ndarray:
    arr, mode = _read_array(path)
    if arr.ndim != 2:
        raise DataError(f"multiclass mask {path}: expected a palette/grey PNG of class indices, got mode {mode}")
    values = np.unique(arr)
    if values.max(initial=0) >= num_classes:
        raise DataError(f"multiclass mask {path}: values {values.tolist()} outside the expected set "
                        f"0..{num_classes - 1}")
    return arr.astype(np.int64)


class SliceDataset(torch.utils.data.Dataset):
    """Image/mask pairs from folders; see the module docstring for layout and item keys.

    Args:
        root: folder holding the sub-folders.
        images, masks: sub-folder names of images and masks (``masks=None``: derive the mask from
            ``multiclass``).
        edges: sub-folder of edge maps, or None.
        multiclass: sub-folder of class-index PNGs, or None; then ``labels`` holds those classes.
        soft_masks: masks are soft labels 0–255 (pseudo-labels) → float [0, 1], not validated as binary.
        num_classes: classes expected in ``multiclass`` maps (values 0..num_classes-1).
        ids: restrict to these stems (in this order).
        transform: ``transform(item, generator) -> item`` (see :mod:`.transforms`).
        seed: with a seed, the generator handed to ``transform`` depends only on (seed, epoch, index).
        intensity_maps: id → (scale, offset): the image's grey levels g become clip(scale·g + offset, 0, 1)
            as they are read (:func:`covseg_fast.data.intensity.matching_maps`); ids not in it are kept.
    Raises:
        DataError: missing/empty folder, an image without mask (or edge/multiclass map).
    """

    def __init__(self, root: str, images: str = "Imgs", masks: Optional[str] = "GT", edges: Optional[str] = None,
                 multiclass: Optional[str] = None, soft_masks: bool = False, num_classes: int = 3,
                 ids: Optional[Sequence[str]] = None,
                 transform: Optional[Callable[..., dict]] = None, seed: Optional[int] = None,
                 intensity_maps: Optional[dict[str, tuple[float, float]]] = None) -> None:
        self.root = root
        self.intensity_maps = dict(intensity_maps or {})
        self.soft_masks = soft_masks
        self.num_classes = num_classes
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        if masks is None and multiclass is None:
            raise ValueError("SliceDataset: give masks and/or multiclass")
        img_index = _index_folder(os.path.join(root, images), IMAGE_EXTS, "image")
        others = {}
        for key, sub in (("mask", masks), ("edge", edges), ("multiclass", multiclass)):
            if sub is not None:
                others[key] = _index_folder(os.path.join(root, sub), MASK_EXTS, key)
        stems = sorted(img_index, key=natural_key) if ids is None else [str(i) for i in ids]
        self.samples: list[dict[str, str]] = []
        for stem in stems:
            if stem not in img_index:
                raise DataError(f"id {stem!r} has no image in {os.path.join(root, images)}")
            entry = {"id": stem, "image": img_index[stem]}
            for key, index in others.items():
                if stem not in index:
                    raise DataError(f"image {img_index[stem]} has no {key} file named {stem}.* in "
                                    f"{os.path.dirname(next(iter(index.values())))}")
                entry[key] = index[stem]
            self.samples.append(entry)
        for key, index in others.items():
            extra = sorted(set(index) - set(img_index), key=natural_key)
            if extra:
                log.warning("%s: %d %s file(s) without image ignored (e.g. %s)", root, len(extra), key, extra[0])

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s["id"] for s in self.samples]

    def set_epoch(self, epoch: int) -> None:
        """Change the per-item random streams (only matters with ``seed``)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> dict[str, Any]:
        """Read sample ``index`` without transform. Raises DataError naming the file."""
        s = self.samples[index]
        image = read_grey(s["image"])
        h, w = image.shape
        grey = image.astype(np.float32) / 255.0
        if s["id"] in self.intensity_maps:
            scale, offset = self.intensity_maps[s["id"]]
            grey = np.clip(grey * np.float32(scale) + np.float32(offset), 0.0, 1.0)
        item: dict[str, Any] = {"id": s["id"], "orig_size": (h, w), "image": torch.from_numpy(grey)[None]}

        def same_size(arr: np.ndarray, path: str) -> np.ndarray:
            if arr.shape[:2] != (h, w):
                raise DataError(f"{path}: size {arr.shape[1]}×{arr.shape[0]} differs from its image "
                                f"{s['image']} ({w}×{h})")
            return arr

        labels = None
        if "multiclass" in s:
            labels = same_size(_read_classes(s["multiclass"], self.num_classes), s["multiclass"])
        if "mask" in s:
            mask = _read_soft(s["mask"]) if self.soft_masks else _read_binary(s["mask"], "mask")
            mask = same_size(mask, s["mask"])
        else:
            mask = (labels > 0).astype(np.float32)
        if labels is None:
            labels = (mask > 0.5).astype(np.int64)
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask))[None]
        item["labels"] = torch.from_numpy(np.ascontiguousarray(labels))
        if "edge" in s:
            item["edge"] = torch.from_numpy(same_size(_read_binary(s["edge"], "edge map"), s["edge"]))[None]
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.load(index)
        if self.transform is not None:
            gen = item_generator(self.seed, self.epoch, index) if self.seed is not None else None
            item = self.transform(item, gen)
        return item

    def check(self) -> int:
        """Read every sample once (raises DataError on the first bad file); returns the count."""
        for i in range(len(self)):
            self.load(i)
        return len(self)
