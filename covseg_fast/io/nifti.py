"""Read NIfTI CT volumes (.nii, .nii.gz) with nibabel into a canonical :class:`Volume`.

Handles any orientation (LPS, RAS, LAS, oblique: reoriented by voxel-axis permutation/flip only),
``scl_slope``/``scl_inter`` scaling and int16/uint16/int32/float storage. 3-D images, and 4-D/5-D
images whose extra dimensions are all 1, are accepted; everything else raises :class:`VolumeError`
with a one-line reason.

A ``.nii.gz`` is decompressed in full once, before nibabel parses it, so that the gzip trailer (CRC-32
and length) is checked: nibabel reads only the bytes it needs and never verifies it, which let a flipped
byte, a damaged CRC, trailing junk or the last few bytes cut off pass as a valid volume.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import zlib

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
        img = _load_checked(path)
    except PermissionError:
        raise VolumeError("permission denied (file not readable)") from None
    except VolumeError:
        raise
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
    except Exception as exc:  # e.g. an uncompressed .nii cut short in its voxel data
        raise VolumeError(f"cannot read voxel data ({type(exc).__name__}: {_one_line(exc)})") from None
    data = np.asarray(data, dtype=np.float32).reshape(shape[:3], order="A")
    warnings = check_ct_values(data, path)
    vol = canonicalize(data, img.affine, path=path, fmt="nifti", header=img.header.copy())
    vol.warnings.extend(warnings)
    return vol


GZIP_MAGIC = b"\x1f\x8b"


def _load_checked(path: str):
    """nibabel image of ``path``; a gzip file is decompressed and checked (CRC, length) first."""
    if not path.lower().endswith(".gz"):
        return nib.load(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != GZIP_MAGIC:
        raise VolumeError("not gzip-compressed although named .gz (an uncompressed NIfTI must end in .nii)")
    raw = io.BytesIO()
    try:
        with gzip.open(path, "rb") as gz:
            shutil.copyfileobj(gz, raw, 16 << 20)  # reading to the end verifies CRC-32 and length
    except EOFError:
        raise VolumeError("truncated gzip: the compressed data ends before its end marker") from None
    except gzip.BadGzipFile as exc:
        msg = _one_line(exc)
        if msg.startswith("Not a gzipped file"):  # the first member was fine: junk follows it
            raise VolumeError("corrupt gzip: unexpected data after the end of the compressed stream") from None
        raise VolumeError(f"corrupt gzip: {msg}") from None
    except zlib.error as exc:
        raise VolumeError(f"corrupt gzip: invalid compressed data ({_one_line(exc)})") from None
    head = raw.getbuffer()[:348].tobytes()
    raw.seek(0)
    # the magic string says which parser; checked here so nibabel does not log "fixes" of a non-NIfTI
    if head[4:8] == b"n+2\0":
        return nib.Nifti2Image.from_stream(raw)
    if head[344:348] == b"n+1\0":
        return nib.Nifti1Image.from_stream(raw)
    raise VolumeError("not a readable NIfTI (no NIfTI-1 or NIfTI-2 header magic after decompression)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
