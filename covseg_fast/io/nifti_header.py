"""Parse and check a NIfTI-1/-2 header from its raw bytes, before any voxel is read.

nibabel checks headers too, but by default it *fixes* what it finds (``check_fix``): a wrong
``sizeof_hdr`` is reset, zero or negative ``pixdim`` become 1 or their absolute value, an invalid
qform/sform code becomes 0, and a damaged file then screens as a plausible volume with 1 mm voxels.
Here the header is parsed with ``check=False`` and nibabel's own check battery is run with
``check_only``: every problem it would fix at level ≥ 30 fails the case, as do checks nibabel does not
make (non-finite pixdim, negative or absurd dimensions). :func:`data_bytes` gives the byte count the
header claims, so a reader can compare it with what the file really holds before allocating anything.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.batteryrunners import BatteryRunner

from .volume import VolumeError

NIFTI1_MAGIC = (b"n+1\0", b"ni1\0")   # at bytes 344:348 of a 348-byte header
NIFTI2_MAGIC = (b"n+2\0", b"ni2\0")   # at bytes 4:8 of a 540-byte header
HEADER_BYTES = 540 + 4                # enough for either header and the 4-byte extension flag
# nibabel reports checked here with better messages (its "vox offset ... not divisible by 16" only concerns
# SPM's memory mapping: the file reads fine)
OWN_CHECKS = ("sizeof_hdr", "pixdim", "vox offset")


def parse_header(head: bytes):
    """NIfTI-1 or -2 header parsed from the first bytes of the (decompressed) file; checked, not fixed.

    Raises:
        VolumeError: no NIfTI magic, a header cut short, or a damaged header (the reason names the field).
    """
    if len(head) >= 348 and head[344:348] in NIFTI1_MAGIC:
        klass, size = nib.Nifti1Header, 348
    elif len(head) >= 8 and head[4:8] in NIFTI2_MAGIC:
        klass, size = nib.Nifti2Header, 540
    else:
        raise VolumeError("not a readable NIfTI (no NIfTI-1 or NIfTI-2 header magic)")
    if len(head) < size:
        raise VolumeError(f"truncated NIfTI header: {len(head)} of {size} bytes")
    if head[344:348] == b"ni1\0" or head[4:8] == b"ni2\0":
        raise VolumeError("NIfTI header of a .hdr/.img pair (magic 'ni1'/'ni2'): a .nii file must hold its voxels "
                          "(magic 'n+1'); convert the pair to .nii")
    try:
        hdr = klass(head[:size], endianness=_endianness(head), check=False)
    except Exception as exc:  # nibabel: WrapStructError, HeaderDataError
        raise VolumeError(f"not a readable NIfTI header ({type(exc).__name__}: {exc})") from None
    problems = _problems(hdr, klass)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise VolumeError("damaged NIfTI header: " + "; ".join(problems[:3]) + more + " (nothing is repaired: fix or "
                          "re-export the file)")
    return hdr


def _endianness(head: bytes) -> str | None:
    """Byte order from sizeof_hdr when it is 348 or 540 either way round; else None (nibabel guesses from dim[0],
    which a damaged dim[0] would turn around, garbling every field)."""
    for order in ("<", ">"):
        if int.from_bytes(head[:4], "little" if order == "<" else "big") in (348, 540):
            return order
    return None


def _problems(hdr, klass) -> list[str]:
    out = []
    if int(hdr["sizeof_hdr"]) != klass.sizeof_hdr:
        version = "NIfTI-2" if klass is nib.Nifti2Header else "NIfTI-1"
        out.append(f"sizeof_hdr is {int(hdr['sizeof_hdr'])}, a {version} header has {klass.sizeof_hdr}")
    ndim = int(hdr["dim"][0])
    dims = [int(d) for d in hdr["dim"][1:ndim + 1]] if 1 <= ndim <= 7 else []
    if not dims:
        out.append(f"dim[0] (the number of dimensions) is {ndim}, expected 1 to 7")
    elif any(d < 0 for d in dims):
        out.append(f"negative dimension in shape {tuple(dims)}")
    pix = np.asarray(hdr["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pix)):
        out.append(f"non-finite voxel size pixdim[1:4] = {_fmt(pix)}")
    elif np.any(pix <= 0):
        out.append(f"voxel size pixdim[1:4] = {_fmt(pix)} must be positive")
    offset = float(hdr["vox_offset"])
    if not np.isfinite(offset) or offset < klass.sizeof_hdr + 4:  # nibabel accepts 0: voxels read from the header
        out.append(f"vox_offset {offset:g} points inside the header (the voxels start at byte "
                   f"{klass.sizeof_hdr + 4} or later in a .nii)")
    reports = BatteryRunner(klass._get_checks()).check_only(hdr)
    for rep in reports:
        msg = rep.problem_msg
        if rep.problem_level >= 30 and msg and not msg.startswith(OWN_CHECKS):
            out.append(msg)
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def data_bytes(hdr) -> tuple[int, int, tuple[int, ...]]:
    """(offset of the first voxel, bytes of voxel data the header claims, shape) of a checked header."""
    shape = tuple(int(s) for s in hdr.get_data_shape())
    itemsize = hdr.get_data_dtype().itemsize
    offset = int(hdr.get_data_offset())
    return offset, int(np.prod(shape, dtype=object)) * itemsize, shape


def describe_claim(hdr) -> str:
    """'shape (512, 512, 20000) int16 = 10.5 GB' for messages."""
    _, nbytes, shape = data_bytes(hdr)
    return f"shape {shape} {hdr.get_data_dtype().name} = {human_bytes(nbytes)}"


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"
