"""Trachea and main bronchi: found in the lung candidates and taken out of them.

Algorithm (canonical RAS+ grid, slice k+1 is above slice k), on ``cand`` (air-like voxels inside the body):

1. seed: from the top slice down (through the upper ``SEARCH_FRACTION`` of the slices holding candidates),
   the first 2-D component (4-connected) that looks like the trachea in cross-section: an area of
   ``TRACHEA_MM2`` (≈ 10–30 mm across), compact (at least half of its bounding box), its centre within
   ``CENTRAL_FRACTION`` of the body's width from the body's centre line, and a tube below it: followed down
   slice by slice (next step) it keeps a trachea-like area for at least ``MIN_TUBE_MM``;
2. tracking: from the seed up, and from the seed down, each next slice's components that overlap the
   airway of the slice before are airway, unless a component is larger than ``GROWTH`` × the airway area it
   overlaps or than the largest trachea area: then the airway has entered the lung (there the lumen merges
   with the aerated parenchyma, or the tube "explodes"), and that branch stops;
3. it stops ``BRONCHI_MM`` below the carina (the first slice with two branches): the trachea and the main
   bronchi, not the airway tree inside the lungs.

A scan without the trachea (a lower-chest scan) finds no seed and removes nothing. The airway's wall is
tissue, never a candidate, so nothing else is taken.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

TRACHEA_MM2 = (80.0, 700.0)
CENTRAL_FRACTION = 0.15
SEARCH_FRACTION = 0.6
MIN_TUBE_MM = 30.0
GROWTH = 2.5
BRONCHI_MM = 40.0


def _components(plane: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(plane)


def _trachea_like(lab: np.ndarray, n: int, px_mm2: float, center: float, width: float) -> list[int]:
    """Labels (of one slice) whose area, compactness and position fit a trachea, the most central first."""
    if n == 0 or not np.isfinite(center) or width <= 0:
        return []
    out = []
    for lbl, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        region = lab[box] == lbl
        area = int(region.sum())
        if not TRACHEA_MM2[0] <= area * px_mm2 <= TRACHEA_MM2[1]:
            continue
        if area < 0.5 * region.size:
            continue
        cx = box[0].start + np.nonzero(region)[0].mean()
        if abs(cx - center) <= CENTRAL_FRACTION * width:
            out.append((abs(cx - center), lbl))
    return [lbl for _, lbl in sorted(out)]


def _follow(cand: np.ndarray, start: np.ndarray, k0: int, step: int, px_mm2: float, slice_mm: float,
            max_slices: int | None = None, stop_below_carina: bool = False) -> list[tuple[int, np.ndarray]]:
    """Track the airway from ``start`` (2-D bool at slice ``k0``) slice by slice in direction ``step``."""
    out, cur, k = [], start, k0
    max_area = TRACHEA_MM2[1] / px_mm2
    carina_k = None
    while True:
        k += step
        if not 0 <= k < cand.shape[2] or (max_slices is not None and len(out) >= max_slices):
            return out
        lab, n = _components(cand[:, :, k])
        if n == 0:
            return out
        cur_lab, _ = _components(cur)
        cur_area = np.bincount(cur_lab.ravel())
        nxt = np.zeros_like(cur)
        for lbl in np.unique(lab[cur]):
            if lbl == 0:
                continue
            region = lab == lbl
            parents = np.unique(cur_lab[region])
            parent_area = int(cur_area[parents[parents > 0]].sum())
            area = int(region.sum())
            if area > GROWTH * parent_area or area > max_area:
                continue  # the branch enters the lung here
            nxt |= region
        if not nxt.any():
            return out
        out.append((k, nxt))
        cur = nxt
        if stop_below_carina:
            if carina_k is None and _components(nxt)[1] >= 2:
                carina_k = k
            if carina_k is not None and abs(k - carina_k) * slice_mm >= BRONCHI_MM:
                return out


def remove_airway(cand: np.ndarray, center_x: np.ndarray, width_x: np.ndarray,
                  spacing: tuple[float, float, float]) -> float:
    """Find the trachea and main bronchi in ``cand`` and clear them (in place); returns their volume in mL (0: none)."""
    px_mm2 = float(spacing[0] * spacing[1])
    slice_mm = float(spacing[2])
    zs = np.flatnonzero(cand.any(axis=(0, 1)))
    if zs.size == 0:
        return 0.0
    top, bottom = zs[-1], zs[0]
    last_search = top - int(SEARCH_FRACTION * (top - bottom + 1))
    tube_slices = max(1, int(np.ceil(MIN_TUBE_MM / slice_mm)))
    for k in range(top, max(last_search, bottom) - 1, -1):
        lab, n = _components(cand[:, :, k])
        for lbl in _trachea_like(lab, n, px_mm2, center_x[k], width_x[k]):
            seed = lab == lbl
            below = _follow(cand, seed, k, -1, px_mm2, slice_mm, max_slices=tube_slices)
            if len(below) < tube_slices or any(m.sum() * px_mm2 > TRACHEA_MM2[1] for _, m in below):
                continue
            parts = [(k, seed)] + _follow(cand, seed, k, +1, px_mm2, slice_mm)
            parts += _follow(cand, seed, k, -1, px_mm2, slice_mm, stop_below_carina=True)
            voxels = 0
            for kk, m in parts:
                cand[:, :, kk] &= ~m
                voxels += int(m.sum())
            return voxels * px_mm2 * slice_mm / 1000.0
    return 0.0
