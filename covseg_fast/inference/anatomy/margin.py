"""The margin around the lungs where infection still counts: the lung mask dilated by ``MARGIN_MM``.

A voxel is in the margin when its centre lies within ``MARGIN_MM`` (Euclidean, in mm, with the voxel
spacing) of the centre of a lung voxel and it is not lung itself. The margin keeps lesions at the pleura
that the air-based lung mask cannot hold (dense consolidation or effusion at the lung's edge is not
aerated), while the chest wall, the heart and the abdomen further away are never counted.

The dilation by the exact ball is built from shifted copies of bool arrays (no float distance map, no
int labels): for each slice offset dz the in-plane disk of radius sqrt(R² - (dz·sz)²), and each disk row
by row from dilations along x (a handful of vectorised ORs over the lungs' bounding box).
"""
from __future__ import annotations

import numpy as np

from .components import bounding_box

MARGIN_MM = 5.0


def _shift_or(dst: np.ndarray, src: np.ndarray, axis: int, offset: int) -> None:
    """dst |= src shifted by ``offset`` voxels along ``axis`` (what moves out of the array is dropped)."""
    n = src.shape[axis]
    if abs(offset) >= n:
        return
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    if offset >= 0:
        a[axis], b[axis] = slice(offset, n), slice(0, n - offset)
    else:
        a[axis], b[axis] = slice(0, n + offset), slice(-offset, n)
    dst[tuple(a)] |= src[tuple(b)]


def _disk_dilation(mask: np.ndarray, radius_mm: float, sx: float, sy: float) -> np.ndarray:
    """In-plane dilation of (X, Y, Z) bool by the disk {(i·sx)² + (j·sy)² ≤ radius²} (every slice alike)."""
    jmax = int(np.floor(radius_mm / sy + 1e-9))
    half_widths = {j: int(np.floor(np.sqrt(max(radius_mm ** 2 - (j * sy) ** 2, 0.0)) / sx + 1e-9))
                   for j in range(-jmax, jmax + 1)}
    out = np.zeros_like(mask)
    along_x = mask.copy()
    for w in range(0, max(half_widths.values()) + 1):
        if w > 0:
            _shift_or(along_x, mask, 0, w)
            _shift_or(along_x, mask, 0, -w)
        for j, hw in half_widths.items():
            if hw == w:
                _shift_or(out, along_x, 1, j)
    return out


def ball_dilation(mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """(X, Y, Z) bool dilated by the ball of ``radius_mm`` (in mm, anisotropic voxels) on its bounding box."""
    sx, sy, sz = (float(s) for s in spacing)
    pad = (int(radius_mm // sx) + 1, int(radius_mm // sy) + 1, int(radius_mm // sz) + 1)
    out = np.zeros_like(mask)
    box = bounding_box(mask, pad)
    if box is None:
        return out
    sub = mask[box]
    acc = out[box]  # a view: filled in place
    kmax = int(np.floor(radius_mm / sz + 1e-9))
    for dz in range(0, kmax + 1):  # one in-plane disk alive at a time, used above and below
        disk = _disk_dilation(sub, float(np.sqrt(max(radius_mm ** 2 - (dz * sz) ** 2, 0.0))), sx, sy)
        _shift_or(acc, disk, 2, dz)
        if dz:
            _shift_or(acc, disk, 2, -dz)
    return out
