"""Axial-slice datasets over labelled CT volumes (NIfTI), split by volume, never by slice.

Public layouts recognised by :func:`find_cases` (under ``root``)::

    COVID-19-CT-Seg_20cases/<name>.nii.gz + Infection_Mask/<name>.nii.gz   (Ma et al., 20 cases)
    studies/CT-1/study_0255.nii.gz       + masks/study_0255_mask.nii.gz    (MosMedData, CT-1 only)
    tr_im.nii.gz + tr_mask.nii.gz                                          (MedSeg, 100 slices)
    rp_im/<n>.nii.gz + rp_msk/<n>.nii.gz                                   (MedSeg Radiopaedia, 9 volumes)

Volumes are read with nibabel (scl_slope/scl_inter applied), reoriented to the closest
canonical frame (RAS+, ``nibabel.as_closest_canonical``) and sliced along the superior axis.
Each 2-D slice is shown radiologically: rows run anterior → posterior, columns patient-right →
patient-left (``slice = volume[::-1, ::-1, k].T``). HU are mapped to [0, 1] by a lung window.
MedSeg ``tr_im`` stacks 100 slices of ~40 patients with no patient ids, so it is one "case".
Some public volumes are not in HU (the Radiopaedia cases of Ma et al. hold 0–255 grey values): a
volume whose values all lie in [0, 255] is taken as already windowed and scaled by 1/255, with a
warning (``intensity="hu"`` forces the window).
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import logging
import os
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ._seeding import item_generator
from .slices import DataError
from ..windows import LUNG_WINDOW as DEFAULT_WINDOW

log = logging.getLogger(__name__)

__all__ = ["VolumeCase", "VolumeSliceDataset", "find_cases", "load_canonical", "window_hu", "axial_slice",
           "DEFAULT_WINDOW"]


@dataclasses.dataclass(frozen=True)
class VolumeCase:
    """One labelled volume: id, image path, mask path, patient id (for leakage-free splits), the
    mask labels that count as infection (None: any label > 0)."""

    case_id: str
    image: str
    mask: str
    patient: str = ""
    infection_labels: Optional[tuple[int, ...]] = None


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return re.sub(r"\.nii(\.gz)?$", "", name)


def _pairs(img_glob: str, mask_dir: str, mask_name: Callable[[str], str], prefix: str,
           labels: Optional[tuple[int, ...]] = None) -> list[VolumeCase]:
    out = []
    for img in sorted(glob.glob(img_glob)):
        stem = _stem(img)
        cands = [os.path.join(mask_dir, mask_name(stem) + ext) for ext in (".nii.gz", ".nii")]
        mask = next((c for c in cands if os.path.exists(c)), None)
        if mask is None:
            log.debug("%s: no mask, skipped", img)
            continue
        out.append(VolumeCase(f"{prefix}{stem}", img, mask, f"{prefix}{stem}", labels))
    return out


def find_cases(root: str) -> list[VolumeCase]:
    """Labelled volumes under ``root`` in any of the public layouts (module docstring).

    Raises:
        DataError: root missing, or no labelled volume found.
    """
    if not os.path.isdir(root):
        raise DataError(f"volume folder not found: {root}")
    cases: list[VolumeCase] = []
    ma = os.path.join(root, "COVID-19-CT-Seg_20cases")
    if os.path.isdir(ma):
        cases += _pairs(os.path.join(ma, "*.nii*"), os.path.join(root, "Infection_Mask"), lambda s: s, "")
    mos = os.path.join(root, "studies", "CT-1")
    if os.path.isdir(mos):
        cases += _pairs(os.path.join(mos, "*.nii*"), os.path.join(root, "masks"), lambda s: s + "_mask", "")
    for ext in (".nii.gz", ".nii"):
        im, mk = os.path.join(root, "tr_im" + ext), os.path.join(root, "tr_mask" + ext)
        if os.path.exists(im) and os.path.exists(mk):
            # MedSeg: 1 GGO, 2 consolidation, 3 pleural effusion → infection = {1, 2}
            cases.append(VolumeCase("medseg_tr", im, mk, "medseg_tr", (1, 2)))
    if os.path.isdir(os.path.join(root, "rp_im")):
        cases += _pairs(os.path.join(root, "rp_im", "*.nii*"), os.path.join(root, "rp_msk"), lambda s: s,
                        "medseg_rp_", (1, 2))
    if not cases:
        raise DataError(f"{root}: no labelled CT volumes found (expected COVID-19-CT-Seg_20cases/ + "
                        f"Infection_Mask/, studies/CT-1/ + masks/, tr_im + tr_mask, or rp_im/ + rp_msk/)")
    return cases


def load_canonical(path: str, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume reoriented to the closest canonical (RAS+) frame.

    Orientation, scaling and validity are decided by ``covseg_fast.io.read_nifti``, the one place that
    does so for training and screening alike.

    Returns:
        (data (X, Y, Z) in ``dtype`` with scaling applied, 4×4 canonical affine).
    Raises:
        DataError: unreadable file, not a 3-D volume, NaN/Inf voxels (the reason from covseg_fast.io).
    """
    from ..io import VolumeError, read_nifti

    try:
        volume = read_nifti(path)
    except VolumeError as exc:
        raise DataError(f"cannot read volume {path}: {exc}") from exc
    return volume.data.astype(dtype, copy=False), volume.affine


def axial_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` of a canonical (X, Y, Z) volume as a radiological (rows A→P, cols R→L) (Y, X) image."""
    return np.ascontiguousarray(volume[::-1, ::-1, k].T)


def window_hu(hu: np.ndarray | torch.Tensor, window: Sequence[float] = DEFAULT_WINDOW):
    """Map HU to [0, 1]: (clip(hu, lo, hi) − lo)/(hi − lo). Raises ValueError if hi ≤ lo."""
    lo, hi = float(window[0]), float(window[1])
    if hi <= lo:
        raise ValueError(f"window must be (low, high) with high > low, got {tuple(window)}")
    if isinstance(hu, torch.Tensor):
        return ((hu.float() - lo) / (hi - lo)).clamp(0, 1)
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1)


def infection_mask(raw: np.ndarray, case: VolumeCase) -> np.ndarray:
    """Boolean infection mask of a label volume: labels > 0, or those in ``case.infection_labels``.

    Raises:
        DataError naming the file when a value is not a non-negative integer label (a probability map
        or an image passed as a mask would otherwise be rounded silently).
    """
    labels = np.rint(raw)
    if raw.size:
        off = np.abs(raw - labels) > 1e-3
        bad = raw[off | (labels < 0)]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in np.unique(bad)[:5])
            raise DataError(f"{case.mask}: mask values must be non-negative integer labels; found {shown} "
                            f"({bad.size} voxels)")
    labels = labels.astype(np.int64)
    return labels > 0 if case.infection_labels is None else np.isin(labels, case.infection_labels)


class VolumeSliceDataset(torch.utils.data.Dataset):
    """Axial slices of labelled volumes, as dict items like :class:`SliceDataset`'s.

    Items: ``image`` (1, H, W) float in [0, 1] (lung window), ``mask`` (1, H, W) {0,1} float,
    ``labels`` (H, W) int64 (infection 0/1), ``id`` "<case>:<slice>",
    ``case`` str, ``slice`` int, ``orig_size`` (H, W).

    Args:
        cases: :class:`VolumeCase` list (``find_cases(root)``).
        case_ids: keep only these cases (e.g. one part of :func:`~.splits.make_split`).
        window: HU window (low, high) mapped to [0, 1].
        drop_empty: skip slices without infection (as the MSA-UNet paper).
        transform, seed: as in :class:`SliceDataset`.
        cache_volumes: how many decoded volumes to keep in memory.
        intensity: "auto" (volumes with all values in [0, 255] are 8-bit grey, scaled by 1/255; others
            are HU and windowed) or "hu" (always window).
    Raises:
        DataError: unreadable volume, mask/volume shape or affine mismatch, unknown case id.
    """

    def __init__(self, cases: Sequence[VolumeCase], case_ids: Optional[Sequence[str]] = None,
                 window: Sequence[float] = DEFAULT_WINDOW, drop_empty: bool = False,
                 transform: Optional[Callable[..., dict]] = None, seed: Optional[int] = None,
                 cache_volumes: int = 2, intensity: str = "auto") -> None:
        window_hu(np.zeros(1), window)  # validates the window
        if intensity not in ("auto", "hu"):
            raise ValueError(f"intensity must be 'auto' or 'hu', got {intensity!r}")
        self.intensity = intensity
        self._grey_cases: set[str] = set()
        by_id = {c.case_id: c for c in cases}
        if case_ids is not None:
            missing = [c for c in case_ids if c not in by_id]
            if missing:
                raise DataError(f"unknown case ids {missing[:5]}; known: {sorted(by_id)[:10]}…")
            cases = [by_id[c] for c in case_ids]
        self.cases = list(cases)
        self.window = (float(window[0]), float(window[1]))
        self.drop_empty = drop_empty
        self.transform, self.seed, self.epoch = transform, seed, 0
        self._cache: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._cache_size = max(1, int(cache_volumes))
        self.index: list[tuple[int, int]] = []
        self.voxel_ml: dict[str, float] = {}  # case → voxel volume in mL (per-volume reports, metrics.per_volume)
        for ci, case in enumerate(self.cases):
            mask = self._mask(case)
            if drop_empty:
                keep = np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(axis=0))
            else:
                keep = np.arange(mask.shape[2])
            self.index += [(ci, int(k)) for k in keep]

    def _mask(self, case: VolumeCase) -> np.ndarray:
        raw, affine = load_canonical(case.mask, dtype=np.float32)
        self.voxel_ml[case.case_id] = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        return infection_mask(raw, case)

    def _volume(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        case = self.cases[ci]
        if case.case_id in self._cache:
            self._cache.move_to_end(case.case_id)
            return self._cache[case.case_id]
        image, aff_i = load_canonical(case.image)
        mask_raw, aff_m = load_canonical(case.mask)
        if image.shape != mask_raw.shape:
            raise DataError(f"{case.mask}: mask shape {mask_raw.shape} differs from volume {case.image} {image.shape}")
        if not np.allclose(aff_i, aff_m, atol=1e-3):
            raise DataError(f"{case.mask}: mask affine differs from volume {case.image} (not on the same grid)")
        if (self.intensity == "auto" and case.case_id not in self._grey_cases and image.size
                and image.min() >= 0 and image.max() <= 255):
            log.warning("%s: values in [0, 255], not HU: taken as 8-bit grey (scaled by 1/255, no window)", case.image)
            self._grey_cases.add(case.case_id)
        mask = infection_mask(mask_raw, case)
        self._cache[case.case_id] = (image, mask)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image, mask

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def __getitem__(self, index: int) -> dict[str, Any]:
        ci, k = self.index[index]
        image, mask = self._volume(ci)
        hu = axial_slice(image, k)
        m = axial_slice(mask, k).astype(np.float32)
        case = self.cases[ci]
        grey = hu.astype(np.float32) / 255.0 if case.case_id in self._grey_cases else window_hu(hu, self.window)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(grey))[None],
            "mask": torch.from_numpy(m)[None],
            "labels": torch.from_numpy(m.astype(np.int64)),
            "id": f"{case.case_id}:{k:04d}", "case": case.case_id, "slice": k,
            "orig_size": tuple(hu.shape)}
        if self.transform is not None:
            gen = item_generator(self.seed, self.epoch, index) if self.seed is not None else None
            item = self.transform(item, gen)
        return item
