"""Body mask: the patient, without the scanner table, the bed, the air and the padding outside the field of view.

Algorithm (canonical RAS+ grid, axial slices ``data[:, :, k]``), on a coarse in-plane grid of blocks of
f×f voxels, f = round(``COARSE_MM`` / in-plane spacing) (at least 1), then brought back to the input grid:

1. tissue = HU > ``TISSUE_MIN_HU`` (-500): soft tissue and bone, but also the table, cables and clothing;
   air, aerated lung and padding (-1024, -2048, -3024 outside the reconstruction circle) are not tissue;
2. a block of the coarse grid is tissue when most of its voxels are;
3. each slice is opened with a 3×3 square: what is thinner than about two blocks (≈ 6 mm: the table's
   shells, the mattress, sheets, cables) goes, and so do the thin bridges that join the table to the back;
4. the largest 3-D (6-connected) component of what remains is the patient; the table, now detached, is
   another component (or nothing) and is dropped with everything else outside;
5. one dilation step within the tissue gives back the skin that step 3 took off;
6. per slice, holes are filled: lungs, airways and bowel gas enclosed by the body become "inside". On a
   cropped scan the body reaches the image edge and the lungs are open to it: there a region open to the
   edge is inside too when at least half of it (``OPEN_HOLE_IN_HULL``) lies within the slice's convex hull
   of the body (lungs cut by the edge), while air around a (roughly convex) body lies mostly outside it;
7. ``inside`` is the filled body less one block at its surface (the coarse, blocky outline must never
   reach the air around the patient), on the input grid.

Memory: bool and uint8 only; the coarse grid holds 1/f² of the voxels.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .components import INPLANE_SQUARE, fill_holes_2d, largest_component

TISSUE_MIN_HU = -500.0
COARSE_MM = 3.0
OPEN_HOLE_IN_HULL = 0.5


@dataclasses.dataclass
class Body:
    """The patient on the input (canonical) grid.

    Attributes:
        inside: (X, Y, Z) bool: within the patient's outline (lungs, airways and bowel gas included).
        center_x: (Z,) float: the x index of the body's centre in each slice (NaN where no body).
        width_x: (Z,) float: the body's width along x in each slice, in voxels (0 where no body).
        factor: the coarse grid's block size f.
    """

    inside: np.ndarray
    center_x: np.ndarray
    width_x: np.ndarray
    factor: int

    @property
    def found(self) -> bool:
        return bool(np.any(self.width_x > 0))


def coarse_factor(spacing_xy: float) -> int:
    """Block size f of the coarse grid: about ``COARSE_MM`` per block, at least 1 voxel."""
    return max(1, int(round(COARSE_MM / max(float(spacing_xy), 1e-6))))


def block_majority(mask: np.ndarray, f: int) -> np.ndarray:
    """(X, Y, Z) bool → (⌈X/f⌉, ⌈Y/f⌉, Z) bool: True where most of the f×f block is True."""
    if f == 1:
        return mask.copy()
    x, y, z = mask.shape
    xc, yc = -(-x // f), -(-y // f)
    padded = np.zeros((xc * f, yc * f, z), dtype=bool)
    padded[:x, :y] = mask
    counts = padded.reshape(xc, f, yc, f, z).sum(axis=(1, 3), dtype=np.uint16)
    return counts * 2 > f * f


def upsample(coarse: np.ndarray, f: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`block_majority`'s grid: every block's value on its f×f voxels, cropped to ``shape``."""
    if f == 1:
        return coarse
    xc, yc, z = coarse.shape
    full = np.broadcast_to(coarse[:, None, :, None, :], (xc, f, yc, f, z)).reshape(xc * f, yc * f, z)
    return np.ascontiguousarray(full[: shape[0], : shape[1]])


def hull_mask(plane: np.ndarray) -> np.ndarray | None:
    """2-D bool: the pixels inside the convex hull of ``plane``'s True pixels (None when degenerate)."""
    pts = np.argwhere(plane & ~ndimage.binary_erosion(plane))
    if len(pts) < 3:
        return None
    try:
        hull = ConvexHull(pts)
    except QhullError:  # all on a line
        return None
    i, j = np.indices(plane.shape, dtype=np.float32)
    inside = np.ones(plane.shape, dtype=bool)
    for a, b, c in hull.equations:  # a half-plane per facet: 2-D temporaries only
        inside &= i * a + j * b + c <= 0.5
    return inside


def fill_open_holes(plane: np.ndarray) -> np.ndarray:
    """A 2-D body slice with its holes filled, and (when the body reaches the image edge) also the regions open to
    the edge that lie mostly (≥ ``OPEN_HOLE_IN_HULL``) inside the body's convex hull: lungs of a cropped scan."""
    filled = fill_holes_2d(plane.copy())
    if not (plane[0].any() or plane[-1].any() or plane[:, 0].any() or plane[:, -1].any()):
        return filled
    hull = hull_mask(plane)
    if hull is None:
        return filled
    lab, n = ndimage.label(~filled)
    if n == 0:
        return filled
    total = np.bincount(lab.ravel(), minlength=n + 1)
    in_hull = np.bincount(lab[hull], minlength=n + 1)
    keep = in_hull >= OPEN_HOLE_IN_HULL * np.maximum(total, 1)
    keep[0] = False
    return filled | keep[lab]


def body_mask(data: np.ndarray, spacing: tuple[float, float, float]) -> Body:
    """(X, Y, Z) HU → :class:`Body` (algorithm in the module docstring).

    Raises:
        ValueError: ``data`` is not 3-D.
    """
    if data.ndim != 3:
        raise ValueError(f"body_mask: expected a 3-D volume, got shape {data.shape}")
    f = coarse_factor(min(spacing[0], spacing[1]))
    tissue = block_majority(data > TISSUE_MIN_HU, f)                         # steps 1-2
    body = ndimage.binary_opening(tissue, structure=INPLANE_SQUARE)          # step 3
    body = largest_component(body)                                           # step 4
    body = ndimage.binary_dilation(body, structure=INPLANE_SQUARE) & tissue  # step 5
    for k in np.flatnonzero(body.any(axis=(0, 1))):                          # step 6
        body[:, :, k] = fill_open_holes(body[:, :, k])
    inside = ndimage.binary_erosion(body, structure=INPLANE_SQUARE, border_value=1)  # step 7
    counts = body.sum(axis=(1,))  # (Xc, Z): body pixels per x column
    xs = (np.arange(body.shape[0]) + 0.5) * f - 0.5
    total = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        center = (xs[:, None] * counts).sum(axis=0) / total
    present = counts > 0
    first = np.where(present.any(axis=0), present.argmax(axis=0), 0)
    last = np.where(present.any(axis=0), body.shape[0] - 1 - present[::-1].argmax(axis=0), -1)
    width = np.where(total > 0, (last - first + 1) * f, 0).astype(np.float64)
    return Body(inside=upsample(inside, f, data.shape), center_x=np.where(total > 0, center, np.nan),
                width_x=width, factor=f)
