"""What a cross-validation study splits and scores: a labelled slice folder or a folder of labelled CT volumes.

Why two kinds: COVID-SemiSeg's slices name no patient, so its folds can only split slices; the public
volume sets (Ma et al., MosMedData, MedSeg) are split by volume with a patient's volumes kept together,
as the Ma et al. benchmark's 5-fold protocol does, and every axial slice of a held-out volume is scored.
Both give the study the same four things: case ids, patient groups, a training set and a scored set.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from torch.utils.data import Dataset

__all__ = ["SliceFolderSource", "VolumeFolderSource"]


class SliceFolderSource:
    """A labelled slice folder (``Imgs/``, ``GT/``, optional ``Edge/``): one case per slice, no patient groups."""

    unit = "slice"
    flag = "--data"

    def __init__(self, path: str, window: Optional[Sequence[float]] = None) -> None:
        from ..train.datasets import open_slice_folder

        if not os.path.isdir(path):
            raise FileNotFoundError(f"--data: no such folder: {path}")
        self.path = path
        self.window = None if window is None else (float(window[0]), float(window[1]))  # what the images show
        self.case_ids: list[str] = list(open_slice_folder(path, 32).ids)
        self.groups: Optional[dict[str, str]] = None

    def training_set(self, ids: Sequence[str], cfg, seed: int) -> Dataset:
        from ..train.datasets import open_slice_folder

        return open_slice_folder(self.path, cfg.input_size, seed=seed, ids=list(ids), mask_resize=cfg.mask_resize,
                                 augment=cfg.augment)

    def scored_set(self, ids: Sequence[str]) -> Dataset:
        """Held-out slices at their own size (Inf-Net protocol)."""
        from ..data.slices import SliceDataset

        return SliceDataset(self.path, ids=list(ids))

    def describe(self) -> dict[str, Any]:
        return {"unit": self.unit, "data": self.path, "n_cases": len(self.case_ids)}

    def input_info(self) -> Optional[dict[str, Any]]:
        """Stored in the fold checkpoints: the HU window the slice images show, when --window said it."""
        return None if self.window is None else {"source": "slices", "window": list(self.window)}


class VolumeFolderSource:
    """Labelled CT volumes in a public layout (:func:`covseg_fast.data.volumes.find_cases`): one case per
    volume, grouped by patient; training and scoring use their axial slices.

    Args:
        window: HU window mapped to [0, 1] (train and score alike).
        drop_empty: keep only slices with infection, in training and in scoring (the MSA-UNet paper's option).
    """

    unit = "volume"
    flag = "--volumes"

    def __init__(self, root: str, window: Sequence[float] = (-1250.0, 250.0), drop_empty: bool = False) -> None:
        import numpy as np

        from ..data.volumes import find_cases, window_hu

        if not os.path.isdir(root):
            raise FileNotFoundError(f"--volumes: no such folder: {root}")
        window_hu(np.zeros(1), window)  # a bad window fails here, before any training
        self.path, self.window, self.drop_empty = root, (float(window[0]), float(window[1])), drop_empty
        self.cases = find_cases(root)
        self.case_ids = [c.case_id for c in self.cases]
        self.groups = {c.case_id: c.patient or c.case_id for c in self.cases}

    def _slices(self, ids: Sequence[str], transform=None, seed: Optional[int] = None) -> Dataset:
        from ..data.volumes import VolumeSliceDataset

        return VolumeSliceDataset(self.cases, list(ids), window=self.window, drop_empty=self.drop_empty,
                                  transform=transform, seed=seed)

    def training_set(self, ids: Sequence[str], cfg, seed: int) -> Dataset:
        from ..train.datasets import training_transform

        return self._slices(ids, training_transform(cfg.input_size, cfg.mask_resize, cfg.augment), seed)

    def scored_set(self, ids: Sequence[str]) -> Dataset:
        """Every axial slice of the held-out volumes (with infection only under ``drop_empty``), native size."""
        return self._slices(ids)

    def input_info(self) -> dict[str, Any]:
        """Stored in the fold checkpoints (``input``): evaluate and screen apply the same window."""
        return {"source": "volumes", "window": list(self.window), "drop_empty": self.drop_empty}

    def describe(self) -> dict[str, Any]:
        return {"unit": self.unit, "data": self.path, "n_cases": len(self.case_ids),
                "n_patients": len(set(self.groups.values())), "window": list(self.window),
                "drop_empty": self.drop_empty}
