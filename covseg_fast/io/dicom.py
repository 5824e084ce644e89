"""Read one DICOM series (a folder of slices) with pydicom into a canonical :class:`Volume`.

Slices are sorted by ImagePositionPatient projected on the slice normal (row × column cosines);
RescaleSlope/RescaleIntercept are applied; duplicate or missing slices (a gap larger than 1.5× the
median step) raise :class:`VolumeError`, as do slices of several series, orientations, sizes or pixel
spacings (a mixed folder), slices without geometry, and unreadable or corrupt slices. Only regular files
are read (FIFOs, sockets and devices in the folder are ignored, never opened). The affine is built from the DICOM geometry (LPS) and
converted to RAS. Compressed transfer syntaxes are decoded when pydicom finds a decoder package;
otherwise the error names the package to install (and only then: compressed data that an installed
decoder cannot decode is reported as corrupt).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .files import is_regular_file
from .volume import Volume, VolumeError, canonicalize, check_ct_values

log = logging.getLogger(__name__)

# transfer syntax UID → decoder package(s) that pydicom can use for it
DECODERS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or python-gdcm)",   # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (or python-gdcm)",   # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg (or python-gdcm)",   # JPEG-LS
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg (or python-gdcm)",  # JPEG 2000
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (or numpy only: pydicom's own RLE decoder)",
}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise VolumeError("DICOM input needs pydicom: pip install 'covseg_fast[dicom]'") from None
    return pydicom


def looks_like_dicom_file(path: str) -> bool:
    """True for *.dcm files or files with the DICM preamble magic."""
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_dir(path: str) -> bool:
    """True when directory ``path`` directly holds DICOM slice files."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(looks_like_dicom_file(os.path.join(path, n)) for n in names
               if is_regular_file(os.path.join(path, n)))


def read_dicom_series(folder: str) -> Volume:
    """Read the single series in ``folder`` → :class:`Volume` (float32 HU, canonical RAS+).

    Raises:
        VolumeError: no slices, several series, inconsistent geometry, duplicate or missing slices,
            compressed pixel data without a decoder (names the package), unreadable files.
    """
    pydicom = _pydicom()
    if not os.path.isdir(folder):
        raise VolumeError("not a directory (a DICOM series is read from its folder)")
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise VolumeError(f"cannot list the series folder: {exc.strerror or exc}") from None
    files = sorted(os.path.join(folder, n) for n in names
                   if is_regular_file(os.path.join(folder, n)) and n.upper() != "DICOMDIR")
    slices = []
    for f in files:
        if not looks_like_dicom_file(f):
            continue
        try:
            ds = pydicom.dcmread(f)
        except PermissionError:
            raise VolumeError(f"unreadable DICOM file {os.path.basename(f)} (permission denied)") from None
        except Exception as exc:
            raise VolumeError(f"unreadable DICOM file {os.path.basename(f)} ({type(exc).__name__})") from None
        if "PixelData" not in ds:
            continue
        slices.append((f, ds))
    if not slices:
        raise VolumeError("no DICOM image slices in folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise VolumeError(f"{len(series)} series in one folder; put each series in its own folder")
    iop, ps = _geometry(*slices[0])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    size = (slices[0][1].get("Rows"), slices[0][1].get("Columns"))
    pos = []
    for f, ds in slices:
        o, p = _geometry(f, ds)
        if not np.allclose(o, iop, atol=1e-4):
            raise VolumeError(f"mixed series: slice {os.path.basename(f)} has a different orientation")
        if not np.allclose(p, ps, rtol=1e-4):
            raise VolumeError(f"mixed series: slice {os.path.basename(f)} has pixel spacing {p} (others {ps})")
        if (ds.get("Rows"), ds.get("Columns")) != size:
            raise VolumeError(f"mixed series: slice {os.path.basename(f)} is {ds.get('Rows')}×{ds.get('Columns')} "
                              f"pixels (others {size[0]}×{size[1]})")
        try:
            pos.append(np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64))
        except (AttributeError, TypeError, ValueError):
            raise VolumeError(f"slice {os.path.basename(f)} has no valid ImagePositionPatient") from None
        if pos[-1].shape != (3,) or not np.all(np.isfinite(pos[-1])):
            raise VolumeError(f"slice {os.path.basename(f)} has no valid ImagePositionPatient")
    dist = np.array([p @ normal for p in pos])
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    pos = [pos[i] for i in order]
    dist = dist[order]
    if len(slices) > 1:
        steps = np.diff(dist)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            raise VolumeError(f"duplicate slices: {dup.size + 1 if dup.size == 1 else dup.size} slices share a "
                              f"position (e.g. {os.path.basename(slices[dup[0]][0])} and "
                              f"{os.path.basename(slices[dup[0] + 1][0])} at {dist[dup[0]]:.2f} mm)")
        med = float(np.median(steps))
        gaps = np.flatnonzero(steps > 1.5 * med)
        if gaps.size:
            g = gaps[0]
            raise VolumeError(f"missing slices: gap of {steps[g]:.2f} mm (step {med:.2f} mm) between "
                              f"{os.path.basename(slices[g][0])} and {os.path.basename(slices[g + 1][0])}")
        odd = np.flatnonzero(steps < 0.5 * med)
        if odd.size:
            g = odd[0]
            raise VolumeError(f"irregular slice spacing: step of {steps[g]:.2f} mm (median {med:.2f} mm) between "
                              f"{os.path.basename(slices[g][0])} and {os.path.basename(slices[g + 1][0])}; "
                              "slices of another series mixed in?")
        step_vec = (pos[-1] - pos[0]) / (len(slices) - 1)
    else:
        thick = float(slices[0][1].get("SliceThickness", 1.0) or 1.0)
        step_vec = normal * thick
    arrays = []
    for f, ds in slices:
        try:
            arr = ds.pixel_array
        except Exception as exc:
            raise VolumeError(_decode_failure(ds, f, exc)) from None
        if arr.ndim != 2:
            raise VolumeError(f"{os.path.basename(f)}: multi-frame or colour slice {arr.shape} not supported")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        arrays.append(arr.astype(np.float32) * slope + inter)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise VolumeError(f"slices of different sizes {sorted(shapes)}")
    # voxel (i, j, k) = (column, row, slice): transpose each (rows, cols) pixel array
    data = np.stack([a.T for a in arrays], axis=-1)
    lps = np.eye(4)
    lps[:3, 0] = row * ps[1]          # moving along a row = next column, spacing between columns
    lps[:3, 1] = col * ps[0]          # next row, spacing between rows
    lps[:3, 2] = step_vec
    lps[:3, 3] = pos[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS → RAS
    warnings = check_ct_values(data, folder)
    vol = canonicalize(data, affine, path=folder, fmt="dicom", header=None)
    vol.warnings.extend(warnings)
    vol.source_files = tuple(f for f, _ in slices)  # input-grid slice k is slices[k] (a DICOM-SEG references them)
    return vol


def _geometry(path: str, ds) -> tuple[np.ndarray, list[float]]:
    """(ImageOrientationPatient as 6 floats, PixelSpacing as 2 floats) of one slice, checked."""
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        ps = [float(v) for v in ds.PixelSpacing]
    except (AttributeError, TypeError, ValueError) as exc:
        raise VolumeError(f"slice {os.path.basename(path)}: missing or invalid geometry tag "
                          f"({' '.join(str(exc).split())[:120]})") from None
    if iop.shape != (6,) or len(ps) != 2 or not np.all(np.isfinite(iop)) or not all(v > 0 for v in ps) \
            or abs(np.linalg.norm(np.cross(iop[:3], iop[3:])) - 1) > 1e-2:
        raise VolumeError(f"slice {os.path.basename(path)}: invalid geometry (orientation {list(iop)}, "
                          f"pixel spacing {ps})")
    return iop, ps


def _decode_failure(ds, path: str, exc: Exception) -> str:
    """Why ``ds.pixel_array`` failed, in one line: a missing decoder package only when it really is missing."""
    tsuid = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    pkg = DECODERS.get(tsuid)
    available = decoder_available(tsuid) if pkg else None
    detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if pkg and available is False:
        return f"compressed transfer syntax {tsuid} and no decoder installed: pip install {pkg.split(' ')[0]}"
    where = f"cannot decode pixel data of {os.path.basename(path)}"
    if pkg and available:
        return f"{where}: corrupt compressed data (a decoder for {tsuid} is installed; {detail})"
    if pkg:  # pydicom cannot tell whether a decoder exists
        return f"{where} ({detail}); if no decoder is installed for {tsuid}: pip install {pkg.split(' ')[0]}"
    return f"{where} ({detail})"


def decoder_available(tsuid: str) -> bool | None:
    """Whether pydicom has a usable decoder for transfer syntax ``tsuid`` (None: pydicom cannot tell)."""
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3
    except ImportError:
        get_decoder = None
    if get_decoder is not None:
        try:
            return bool(get_decoder(tsuid).is_available)
        except Exception:  # a transfer syntax pydicom has no decoder for at all
            return False
    try:  # pydicom 2.x: pixel data handlers
        from pydicom import config

        handlers = [h for h in config.pixel_data_handlers if h.supports_transfer_syntax(tsuid)]
        return any(h.is_available() for h in handlers)
    except Exception:
        return None
