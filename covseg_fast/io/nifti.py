"""Read NIfTI CT volumes (.nii, .nii.gz) with nibabel into a canonical :class:`Volume`.

Handles any orientation (LPS, RAS, LAS, oblique: reoriented by voxel-axis permutation/flip only),
``scl_slope``/``scl_inter`` scaling and int16/uint16/int32/float storage. 3-D images, and 4-D/5-D
images whose extra dimensions are all 1, are accepted; everything else raises :class:`VolumeError`
with a one-line reason.
"""
from __future__ import annotations

import logging
import os
import zlib
import gzip

import nibabel as nib
import numpy as np

from .volume import Volume, VolumeError, canonicalize, check_ct_values

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str) -> bool:
    """True when the file name ends in .nii or .nii.gz (case-insensitive)."""
    return path.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str) -> Volume:
    """Read ``path`` → :class:`Volume` (float32 HU, canonical RAS+ frame, source geometry kept).

    Raises:
        VolumeError: unreadable, corrupt or truncated file, not a NIfTI, not 3-D, zero-size
            dimension, NaN/Inf voxels, singular affine.
    """
    if not os.path.exists(path):
        raise VolumeError("file not found")
    if os.path.isdir(path):
        raise VolumeError("is a directory, not a NIfTI file")
    if not os.access(path, os.R_OK):
        raise VolumeError("permission denied (file not readable)")
    try:
        img = nib.load(path)
    except PermissionError:
        raise VolumeError("permission denied (file not readable)") from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise VolumeError(f"corrupt or truncated gzip ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, ValueError ...
        raise VolumeError(f"not a readable NIfTI ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if any(s == 0 for s in shape):
        raise VolumeError(f"zero-size dimension in shape {shape}")
    if len(shape) < 3:
        raise VolumeError(f"{len(shape)}-D image {shape}; a CT volume is 3-D")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise VolumeError(f"{len(shape)}-D image {shape}; a CT volume is 3-D (extra dimensions must be 1)")
    try:
        data = np.asanyarray(img.dataobj, order="F")  # applies scl_slope / scl_inter
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise VolumeError(f"corrupt or truncated gzip ({type(exc).__name__}: {_one_line(exc)})") from None
    except Exception as exc:
        raise VolumeError(f"cannot read voxel data ({type(exc).__name__}: {_one_line(exc)})") from None
    data = np.asarray(data, dtype=np.float32).reshape(shape[:3], order="A")
    warnings = check_ct_values(data, path)
    vol = canonicalize(data, img.affine, path=path, fmt="nifti", header=img.header.copy())
    vol.warnings.extend(warnings)
    return vol


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
