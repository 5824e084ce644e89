"""Read NIfTI CT volumes (.nii, .nii.gz) with nibabel into a canonical :class:`Volume`.

Handles any orientation (LPS, RAS, LAS, oblique: reoriented by voxel-axis permutation/flip only),
``scl_slope``/``scl_inter`` scaling and int16/uint16/int32/float storage. 3-D images, and 4-D/5-D
images whose extra dimensions are all 1, are accepted; everything else raises :class:`VolumeError`
with a one-line reason.

Nothing is read before it is known to be safe: only regular files are opened (a FIFO would block
forever); the header is parsed from its raw bytes and checked without nibabel's silent repairs
(:mod:`.nifti_header`); and the voxel bytes the header claims are compared with what the file really
holds before the voxel array is allocated, so memory follows the real data, never the header's claim.

A ``.nii.gz`` is decompressed in full once, before nibabel parses it, so that the gzip trailer (CRC-32
and length) is checked: nibabel reads only the bytes it needs and never verifies it, which let a flipped
byte, a damaged CRC, trailing junk or the last few bytes cut off pass as a valid volume. Decompression
stops as soon as the stream holds more than the header describes (plus a little slack), so a small
file claiming a huge volume, or a decompression bomb, costs at most what the header claims. (The gzip
ISIZE trailer is not used for this: it is the size mod 2³² of the LAST member only, and multi-member
and zero-padded streams are valid.)
"""
from __future__ import annotations

import gzip
import io
import logging
import zlib
from typing import Optional

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

try:  # ISA-L's inflate (pip install isal): about 2× zlib's on CT volumes, same format, CRC-32 and length checked
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _inflate_error
except ImportError:  # pragma: no cover - isal is a dependency, this keeps a bare install working
    _gzip, _inflate_error = gzip, zlib.error

from .files import regular_file
from .nifti_header import HEADER_BYTES, data_bytes, describe_claim, human_bytes, parse_header
from .volume import Volume, VolumeError, canonical_frame, check_ct_values

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str) -> bool:
    """True when the file name ends in .nii or .nii.gz (case-insensitive)."""
    return path.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str) -> Volume:
    """Read ``path`` → :class:`Volume` (float32 HU, canonical RAS+ frame, source geometry kept).

    Raises:
        VolumeError: missing, not a regular file (FIFO, socket, device, directory), unreadable, corrupt
            or truncated file, not a NIfTI, damaged header (sizeof_hdr, pixdim, dim, datatype, offsets),
            less voxel data than the header claims, not 3-D, zero-size dimension, NaN/Inf voxels,
            singular affine.
    """
    st = regular_file(path)
    try:
        img = _load_checked(path, st.st_size)
    except PermissionError:
        raise VolumeError("permission denied (file not readable)") from None
    except VolumeError:
        raise
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, ValueError ...
        raise VolumeError(f"not a readable NIfTI ({type(exc).__name__}: {_one_line(exc)})") from None
    shape = tuple(int(s) for s in img.shape)
    if any(s == 0 for s in shape):
        raise VolumeError(f"zero-size dimension in shape {shape}")
    if len(shape) < 3:
        raise VolumeError(f"{len(shape)}-D image {shape}; a CT volume is 3-D")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise VolumeError(f"{len(shape)}-D image {shape}; a CT volume is 3-D (extra dimensions must be 1)")
    shape3 = shape[:3]
    affine, header = np.asarray(img.affine, dtype=np.float64), img.header.copy()
    ornt, canon_affine, spacing = canonical_frame(affine, shape3)
    try:
        data = _scaled_float32(img, shape3, ornt)
    except Exception as exc:  # e.g. an uncompressed .nii whose voxel data cannot be mapped
        raise VolumeError(f"cannot read voxel data ({type(exc).__name__}: {_one_line(exc)})") from None
    del img  # the decompressed file, before the checks: only the float32 volume stays
    warnings = check_ct_values(data, path)
    return Volume(data=data, affine=canon_affine, spacing=spacing, source_affine=affine, source_shape=shape3,
                  ornt=ornt, source_header=header, path=path, fmt="nifti", warnings=warnings)


def _scaled_float32(img, shape3: tuple[int, int, int], ornt: Optional[np.ndarray] = None,
                    slab_bytes: int = 64 << 20) -> np.ndarray:
    """The voxels with scl_slope/scl_inter applied, as C-contiguous float32, read a slab of slices at a time
    and put straight into the canonical frame ``ornt`` (:func:`~.volume.canonical_frame`; None: the input's).

    Each slab is scaled exactly as ``np.asanyarray(img.dataobj)`` would scale it (nibabel's float64
    arithmetic), reoriented (flips and axis swaps of the slab) and stored at its place in the result, so peak
    memory is the result plus one slab: no float64 copy of the whole volume and no second, reoriented one.
    """
    proxy = img.dataobj.reshape(shape3) if len(img.shape) != 3 else img.dataobj
    if ornt is None:
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    canon_shape = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        canon_shape[int(axis)] = shape3[i]
    out = np.empty(canon_shape, dtype=np.float32)
    z_axis, z_flip, n = int(ornt[2, 0]), ornt[2, 1] < 0, shape3[2]
    per_slice = max(1, shape3[0] * shape3[1] * 8)
    step = max(1, slab_bytes // per_slice)
    for k in range(0, n, step):
        slab = np.asanyarray(proxy[:, :, k:k + step])
        m = slab.shape[2]
        where = [slice(None)] * 3
        where[z_axis] = slice(n - k - m, n - k) if z_flip else slice(k, k + m)  # a flipped z runs backwards
        out[tuple(where)] = nio.apply_orientation(slab, ornt)
    return out


GZIP_MAGIC = b"\x1f\x8b"


def _load_checked(path: str, file_size: int):
    """nibabel image of ``path`` after its header and size checks; a gzip file is decompressed and
    checked (CRC, length) first."""
    if not path.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            hdr = parse_header(fh.read(HEADER_BYTES))
        _check_size(hdr, file_size, "the file")
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        return klass.from_filename(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != GZIP_MAGIC:
        raise VolumeError("not gzip-compressed although named .gz (an uncompressed NIfTI must end in .nii)")
    raw = io.BytesIO()
    try:
        with _gzip.open(path, "rb") as gz:
            head = _read_up_to(gz, HEADER_BYTES)
            hdr = parse_header(head)
            offset, nbytes, _ = data_bytes(hdr)
            limit = offset + nbytes + max(1 << 20, nbytes // 64)  # a little slack after the voxels
            raw.write(head)
            while True:  # reading to the end verifies CRC-32 and length
                chunk = gz.read(min(CHUNK, limit + 1 - raw.tell()) or 1)
                if not chunk:
                    break
                raw.write(chunk)
                if raw.tell() > limit:
                    raise VolumeError(f"decompresses to more than the header describes ({describe_claim(hdr)} "
                                      f"from byte {offset}); extra data after the voxels, or not this header's file")
    except EOFError:
        raise VolumeError("truncated gzip: the compressed data ends before its end marker") from None
    except gzip.BadGzipFile as exc:
        msg = _one_line(exc)
        if msg.startswith("Not a gzipped file"):  # the first member was fine: junk follows it
            raise VolumeError("corrupt gzip: unexpected data after the end of the compressed stream") from None
        raise VolumeError(f"corrupt gzip: {msg}") from None
    except (zlib.error, _inflate_error) as exc:
        raise VolumeError(f"corrupt gzip: invalid compressed data ({_one_line(exc)})") from None
    _check_size(hdr, raw.tell(), "the decompressed file")
    raw.seek(0)
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    return klass.from_stream(raw)


CHUNK = 16 << 20


def _read_up_to(fh, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream)."""
    parts, got = [], 0
    while got < n:
        b = fh.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _check_size(hdr, available: int, what: str) -> None:
    """Fail when ``available`` bytes cannot hold the voxel data the header claims."""
    offset, nbytes, _ = data_bytes(hdr)
    if available < offset + nbytes:
        have = max(0, available - offset)
        raise VolumeError(f"truncated voxel data: the header claims {describe_claim(hdr)} from byte {offset}, "
                          f"{what} holds {human_bytes(have)} of it")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
