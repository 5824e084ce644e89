"""The Volume: CT data in a canonical frame plus what maps a mask back onto the input grid.

This module (with nifti.py and dicom.py) is the ONE place that decides orientation, spacing and
affine. Every reader returns a :class:`Volume` whose ``data`` is float32 Hounsfield units in the
closest canonical RAS+ voxel frame (axis 0 → patient Right, 1 → Anterior, 2 → Superior; axial slices
are ``data[:, :, k]``). The reorientation is a pure permutation/flip of voxel axes (never a resampling),
so a mask computed on ``data`` maps back exactly, voxel for voxel, onto the input grid with
:meth:`Volume.to_source`, and :func:`covseg_fast.io.writer.save_mask` writes it with the input's affine
and header geometry.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

RAS_ORNT = nio.axcodes2ornt(("R", "A", "S"))


class VolumeError(ValueError):
    """An input that cannot be screened; the message is one line saying why."""


@dataclasses.dataclass
class Volume:
    """One CT volume.

    Attributes:
        data: (X, Y, Z) float32 HU in the canonical RAS+ frame.
        affine: 4×4 voxel→world (RAS mm) affine of ``data``.
        spacing: voxel size in mm along the three axes of ``data``.
        source_affine: the input's affine (voxel→RAS mm) on the input grid.
        source_shape: the input's 3-D grid shape.
        ornt: nibabel orientation transform input grid → canonical grid.
        source_header: the input NIfTI header (None for DICOM), reused when writing masks.
        path: the input path; ``fmt``: "nifti" or "dicom".
        source_files: DICOM: the slice files in the order of the input grid's third axis (what a DICOM-SEG
            references); empty for NIfTI.
        warnings: one-line notes (e.g. intensity range not CT-like).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    ornt: np.ndarray
    source_header: Optional[Any] = None
    path: str = ""
    fmt: str = "nifti"
    warnings: list[str] = dataclasses.field(default_factory=list)
    source_files: tuple[str, ...] = ()

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres (|det| of the affine's 3×3 part / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """Map an array on the canonical grid (shape of ``data``) back onto the input grid, exactly."""
        if tuple(array.shape) != tuple(self.data.shape):
            raise ValueError(f"to_source: array shape {array.shape} != volume shape {self.data.shape}")
        back = nio.ornt_transform(RAS_ORNT, self.ornt)
        out = nio.apply_orientation(array, back)
        return np.ascontiguousarray(out)


def canonical_frame(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(ornt, canonical affine, spacing) of a 3-D grid of ``shape`` with voxel→RAS ``affine``.

    ``ornt`` (nibabel: row i = target axis and flip of input axis i) brings the grid to the closest canonical
    RAS+ frame, for any orientation incl. oblique affines (``nibabel.io_orientation``; never a resampling).

    Raises:
        VolumeError: the affine is singular or not finite.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"invalid (singular or non-finite) affine:\n{affine}".replace("\n", " "))
    ornt = nio.io_orientation(affine)
    canon_affine = affine @ nio.inv_ornt_aff(ornt, shape)
    spacing = tuple(float(s) for s in np.sqrt((canon_affine[:3, :3] ** 2).sum(axis=0)))
    return ornt, canon_affine, spacing


def canonicalize(data: np.ndarray, affine: np.ndarray, *, path: str, fmt: str,
                 header: Optional[Any] = None) -> Volume:
    """Bring a 3-D array with its voxel→RAS affine to the closest canonical RAS+ frame
    (:func:`canonical_frame`; the data are permuted/flipped, never resampled).

    Raises:
        VolumeError: the affine is singular or not finite.
    """
    ornt, canon_affine, spacing = canonical_frame(affine, data.shape)
    canon = nio.apply_orientation(data, ornt)
    return Volume(data=np.ascontiguousarray(canon, dtype=np.float32), affine=canon_affine, spacing=spacing,
                  source_affine=np.asarray(affine, dtype=np.float64), source_shape=tuple(int(s) for s in data.shape),
                  ornt=ornt, source_header=header, path=path, fmt=fmt)


NOT_CT = "does not look like CT in HU"  # every warning of check_ct_values contains these words
LABEL_MAP_MAX_VALUES = 64  # a CT has thousands of distinct values; a label map a few dozen at most


def check_ct_values(data: np.ndarray, path: str) -> list[str]:
    """Reject non-finite voxels; return warnings for intensities unlike CT in HU.

    A label map (few distinct non-negative integers: 0/1 masks, multi-label segmentations) and an 8-bit
    image (0–255) are named as such; any other range without air near -1000 HU and tissue near 0 gets a
    generic warning. Each warning contains :data:`NOT_CT`. The readers only warn (masks are read with
    them too, e.g. for training); the screen marks such a case as not a trustworthy CT.

    Raises:
        VolumeError: NaN or Inf voxels.
    """
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise VolumeError(f"{bad} non-finite (NaN/Inf) voxels")
    lo, hi = float(data.min()), float(data.max())
    if not (lo > -500 or hi < -200 or lo < -10000 or hi > 40000):
        return []
    if 0 <= lo and hi <= 1000 and np.array_equal(data, np.round(data)):
        distinct = int(np.count_nonzero(np.bincount(data.astype(np.int64).ravel())))
        if distinct <= LABEL_MAP_MAX_VALUES:
            return [f"looks like a label map ({distinct} distinct integer values in [{lo:g}, {hi:g}]) and {NOT_CT}: "
                    "give the CT image, not its segmentation"]
        if hi <= 255:
            return [f"looks like an 8-bit image (integer values in [{lo:g}, {hi:g}]) and {NOT_CT}: give the CT "
                    "in Hounsfield units (air near -1000)"]
    return [f"intensity range [{lo:g}, {hi:g}] {NOT_CT} (expected air near -1000 and soft tissue near 0)"]


def nifti_from_array(mask: np.ndarray, volume: Volume, dtype=np.uint8):
    """A NIfTI image of ``mask`` (on the input grid) with the input's affine and header geometry.

    Integer ``mask`` is stored as is; float data (probabilities in [0, 1]) stored as ``uint8`` gets a
    ``scl_slope`` chosen by nibabel so that reading returns the probabilities (to 1/255).
    """
    if tuple(mask.shape) != tuple(volume.source_shape):
        raise ValueError(f"mask shape {mask.shape} != input grid {volume.source_shape}")
    src = volume.source_header
    if src is not None and isinstance(src, (nib.Nifti1Header, nib.Nifti2Header)):
        klass = nib.Nifti2Image if isinstance(src, nib.Nifti2Header) else nib.Nifti1Image
        hdr = src.copy()
        hdr.set_data_shape(mask.shape)
        img = klass(mask, None, header=hdr)
        # Restore both transforms with their codes exactly as in the input.
        img.set_qform(src.get_qform(), code=int(src["qform_code"]))
        img.set_sform(src.get_sform(), code=int(src["sform_code"]))
        img.header.set_xyzt_units(*src.get_xyzt_units())
    else:
        img = nib.Nifti1Image(mask, volume.source_affine)
        img.set_qform(volume.source_affine, code=1)
        img.set_sform(volume.source_affine, code=1)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(np.nan, np.nan)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    img.header["intent_code"] = 0
    return img
