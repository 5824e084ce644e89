"""Datasets for ``covseg train``: slice folders through ``covseg_fast.data.slices.SliceDataset``
(imported only when needed), a seeded validation split, and checkpoint-derived settings for resume."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
from torch.utils.data import Dataset, Subset

from ..models.registry import read_checkpoint
from .presets import TrainConfig

log = logging.getLogger(__name__)


class DataModuleMissing(RuntimeError):
    """covseg_fast.data.slices (SliceDataset) is not part of this installation."""


def slice_dataset_class() -> type:
    """``covseg_fast.data.slices.SliceDataset``; raises DataModuleMissing with a clear message if absent."""
    try:
        from ..data.slices import SliceDataset
    except ModuleNotFoundError as exc:
        if exc.name in ("covseg_fast.data", "covseg_fast.data.slices"):
            raise DataModuleMissing(
                "covseg train reads slice folders with covseg_fast.data.slices.SliceDataset, which this "
                f"installation lacks ({exc}); install a covseg_fast that includes covseg_fast.data, or "
                "build a Dataset yourself and use covseg_fast.train.Trainer from Python") from exc
        raise
    except ImportError as exc:
        raise DataModuleMissing(f"covseg_fast.data.slices has no SliceDataset ({exc})") from exc
    return SliceDataset


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Seeded random split into (train, val) with ``round(len·fraction)`` (at least 1) validation items.

    Raises ValueError when ``fraction`` is not in (0, 1) or leaves no training item.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"--val-fraction {fraction} of {n} slices leaves nothing to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[n_val:])), Subset(dataset, sorted(order[:n_val]))


def training_transform(size: int, mask_resize: str = "nearest", augment: str = "none"):
    """Item transform of a training folder: resize to ``size`` (GT and edges ``mask_resize``), then the
    ``augment`` transforms (see :class:`~covseg_fast.train.presets.TrainConfig`)."""
    from ..data.transforms import Compose, RandomFlip, RandomRotate90, RandomRotation, Resize

    steps = [Resize(size, mask_mode=mask_resize)]
    if augment != "none":
        steps.append(RandomFlip())
    if augment == "flip_rot90":
        steps.append(RandomRotate90())
    elif augment == "flip_rotate":
        steps.append(RandomRotation(mask_mode=mask_resize))
    elif augment not in ("none", "flip"):
        raise ValueError(f"unknown augment {augment!r}; choose none, flip, flip_rot90 or flip_rotate")
    return steps[0] if len(steps) == 1 else Compose(steps)


def open_slice_folder(path: str, size: int, soft: bool = False, seed: int = 0,
                      ids: Optional[list[str]] = None, mask_resize: str = "nearest", augment: str = "none",
                      multiclass: Optional[str] = None, num_classes: int = 3,
                      intensity_maps: Optional[dict[str, tuple[float, float]]] = None) -> Dataset:
    """A slice folder at ``size``×``size`` (only the stems ``ids`` when given), as ``covseg train`` reads it.

    Edge maps are used when the folder has them (Ref-Net's edge supervision). Soft pseudo-labels are
    always resized bilinearly; hard masks and edges as ``mask_resize`` says ("nearest" keeps them
    binary, "bilinear" is Inf-Net's soft resize). ``augment`` adds seeded random transforms.
    ``multiclass``: sub-folder of class-index maps (e.g. ``GT-multiclass``) that fill ``labels``
    (values 0..num_classes-1; always resized nearest).
    """
    cls = slice_dataset_class()
    edges = "Edge" if os.path.isdir(os.path.join(path, "Edge")) else None
    transform = training_transform(size, "bilinear" if soft else mask_resize, augment)
    return cls(path, edges=edges, soft_masks=soft, ids=ids, transform=transform, seed=seed,
               multiclass=multiclass, num_classes=num_classes, intensity_maps=intensity_maps)


def open_pseudo_folder(path: str, size: int, seed: int, augment: str, intensity: str = "as_is",
                       labelled: Optional[str] = None) -> Dataset:
    """The pseudo-labelled folder as the pseudo-label stage reads it: soft labels (resized bilinear),
    ``augment``; with ``intensity="match"`` each pseudo-labelled volume's grey levels are mapped onto the
    intensity landmarks of the labelled folder ``labelled`` (its images, not its labels, are read)."""
    maps = None
    if intensity == "match":
        if labelled is None:
            raise ValueError("pseudo_intensity=match needs the labelled slice folder to match to")
        maps = pseudo_intensity_maps(path, labelled)
    return open_slice_folder(path, size, soft=True, seed=seed, augment=augment, intensity_maps=maps)


def pseudo_intensity_maps(pseudo: str, labelled: str) -> dict[str, tuple[float, float]]:
    """id → (scale, offset) matching each volume of the ``pseudo`` folder to the ``labelled`` folder's
    median intensity landmarks (:mod:`covseg_fast.data.intensity`)."""
    from ..data.intensity import image_landmarks, matching_maps, median_landmarks
    from ..data.slices import read_grey

    cls = slice_dataset_class()

    def marks(root: str, soft: bool) -> dict[str, tuple[float, float]]:
        return {s["id"]: image_landmarks(read_grey(s["image"])) for s in cls(root, soft_masks=soft).samples}

    reference = median_landmarks(marks(labelled, False))
    maps = matching_maps(marks(pseudo, True), reference)
    log.info("pseudo-label images matched to the intensity landmarks of %s (lung %.3f, soft tissue %.3f): "
             "%d volumes, grey-level scale %.2f … %.2f", labelled, *reference,
             len({v for v in maps.values()}), min(v[0] for v in maps.values()), max(v[0] for v in maps.values()))
    return maps


def load_slice_datasets(data: str, size: int, val_data: Optional[str] = None, val_fraction: Optional[float] = None,
                        pseudo_data: Optional[str] = None, seed: int = 0, mask_resize: str = "nearest",
                        augment: str = "none", multiclass: Optional[str] = None, num_classes: int = 3,
                        pseudo_intensity: str = "as_is") -> tuple[Dataset, Optional[Dataset], Optional[Dataset]]:
    """(train, val or None, pseudo or None) slice datasets at ``size``×``size``.

    The training (and pseudo-label) folders get ``mask_resize`` and ``augment``; a ``val_data`` folder is
    resized nearest without augmentation. A ``val_fraction`` split is carved from the training folder
    without augmentation (the validation score thresholds GT at 0.5, so a soft resize does not matter).

    Raises:
        FileNotFoundError: a folder that does not exist; ValueError: bad split; DataModuleMissing.
    """
    for label, path in (("--data", data), ("--val-data", val_data), ("--pseudo-data", pseudo_data)):
        if path is not None and not os.path.isdir(path):
            raise FileNotFoundError(f"{label}: no such folder: {path}")
    labelled = dict(multiclass=multiclass, num_classes=num_classes)
    train: Dataset = open_slice_folder(data, size, seed=seed, mask_resize=mask_resize, augment=augment, **labelled)
    val = open_slice_folder(val_data, size, seed=seed, **labelled) if val_data else None
    if val_fraction:
        train, val = split_validation(train, val_fraction, seed)
        if augment != "none":  # the held-out items must not be augmented: a second, plain view of them
            plain = open_slice_folder(data, size, seed=seed, mask_resize=mask_resize, **labelled)
            val = Subset(plain, val.indices)
    pseudo = (open_pseudo_folder(pseudo_data, size, seed, augment, pseudo_intensity, labelled=data)
              if pseudo_data else None)
    return train, val, pseudo


def split_of(train: Dataset, val: Optional[Dataset], seed: int) -> dict[str, Any]:
    """The train/val ids of a ``--val-fraction`` split of a slice folder, in the split-file format of
    :mod:`covseg_fast.data.splits` (so the run can be reproduced or audited)."""
    from ..data.splits import SPLIT_FORMAT

    def ids(part: Dataset) -> list[str]:
        base = part.dataset if isinstance(part, Subset) else part
        return [base.ids[i] for i in part.indices] if isinstance(part, Subset) else list(base.ids)

    parts = {"train": ids(train)}
    if val is not None:
        parts["val"] = ids(val)
    return {"format": SPLIT_FORMAT, "seed": seed, "kind": "fractions", "unit": "slice", "parts": parts}


def load_volume_datasets(root: str, size: int, val_fraction: Optional[float] = None, split_path: Optional[str] = None,
                         seed: int = 0, window: tuple[float, float] = (-1250.0, 250.0), drop_empty: bool = False,
                         mask_resize: str = "nearest", augment: str = "none"
                         ) -> tuple[Dataset, Optional[Dataset], dict[str, Any]]:
    """(train, val or None, split) axial-slice datasets over the labelled CT volumes under ``root``
    (the public layouts of :func:`covseg_fast.data.volumes.find_cases`).

    The split is by volume (patients kept together), never by slice: read from ``split_path`` when that
    file exists (it must cover exactly the volumes found), else made from ``val_fraction`` with ``seed``
    and written there. Without either, every volume trains. ``window`` is the HU window mapped to
    [0, 1]; ``drop_empty`` keeps only slices with infection (the MSA-UNet paper's option).

    Raises:
        DataError (a ValueError) naming the file or folder; ValueError for a bad split.
    """
    from ..data.splits import make_split
    from ..data.transforms import Resize
    from ..data.volumes import VolumeSliceDataset, find_cases

    cases = find_cases(root)
    ids = [c.case_id for c in cases]
    groups = {c.case_id: c.patient or c.case_id for c in cases}
    if split_path is not None and os.path.exists(split_path):
        split = make_split(ids, path=split_path)
    elif val_fraction:
        if not 0 < val_fraction < 1:
            raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
        split = make_split(ids, {"train": 1 - val_fraction, "val": val_fraction}, seed=seed, groups=groups,
                           path=split_path)
    else:
        split = {"format": 1, "seed": seed, "kind": "fractions", "parts": {"train": ids}}
    parts = split["parts"]
    if not parts.get("train"):
        raise ValueError(f"split {split_path or ''} has no 'train' volumes (parts: {sorted(parts)})")
    common = dict(window=window, drop_empty=drop_empty, seed=seed)
    train = VolumeSliceDataset(cases, parts["train"], transform=training_transform(size, mask_resize, augment),
                               **common)
    val = (VolumeSliceDataset(cases, parts["val"], transform=Resize(size), **common)
           if parts.get("val") else None)
    return train, val, split


def settings_from_checkpoint(path: str) -> dict[str, Any]:
    """Model name, model config, TrainConfig and criterion config stored in a Trainer checkpoint
    (so ``--resume`` continues with the same settings unless flags override them)."""
    payload = read_checkpoint(path)
    state = payload.get("train") or {}
    cfg = state.get("config")
    return {"model": payload["model"], "model_config": dict(payload.get("config", {})),
            "train_config": TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
            if cfg else None,
            "criterion_config": dict(state.get("criterion_config", {}))}
