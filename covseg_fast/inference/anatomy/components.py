"""Connected components and per-slice hole filling for the anatomy masks (the one home of both).

3-D components use ``connected-components-3d`` (``cc3d``): on the real 512×512×64 and 512×512×256 lung
candidate masks it labels faster than ``scipy.ndimage.label`` and returns its per-label statistics
(counts, bounding boxes) without a full-volume ``bincount``. Holes are filled with ``fill-voids``, about
10× faster than ``scipy.ndimage.binary_fill_holes`` per slice (both measured in
benchmarks/bench_components.py, benchmarks/results/components_cpu.json). Labels are uint16 when the count
allows, else uint32.
"""
from __future__ import annotations

import cc3d
import fill_voids
import numpy as np
from scipy import ndimage

INPLANE_CROSS = ndimage.generate_binary_structure(2, 1)[:, :, None]   # 4-neighbours within a slice
INPLANE_SQUARE = np.ones((3, 3, 1), dtype=bool)                        # 8-neighbours within a slice
Z_LINE = np.ones((1, 1, 3), dtype=bool)                                # the slices above and below


def label3d(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected components of a (X, Y, Z) bool mask: (labels uint16/uint32, count)."""
    labels, n = cc3d.connected_components(mask, connectivity=6, return_N=True)
    return labels, int(n)


def component_stats(labels: np.ndarray) -> tuple[np.ndarray, list]:
    """Voxel count (index = label) and bounding box (tuple of slices) of every label of ``labels``."""
    st = cc3d.statistics(labels)
    return np.asarray(st["voxel_counts"], dtype=np.int64), st["bounding_boxes"]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (bool; all False when ``mask`` is empty)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return cc3d.largest_k(mask, k=1, connectivity=6) > 0


def fill_holes_2d(plane: np.ndarray) -> np.ndarray:
    """A 2-D bool image with its holes (background not reaching the edge) filled."""
    return fill_voids.fill(np.ascontiguousarray(plane), in_place=True)


def fill_holes_inplane(mask: np.ndarray) -> np.ndarray:
    """Fill, in every axial slice, the background regions that do not reach the slice's edge (in place).

    Unlike ``ndimage.binary_fill_holes`` on the volume, the first and last slices are filled like any other
    (there the volume's top and bottom faces would count as edge).
    """
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        mask[:, :, k] = fill_holes_2d(mask[:, :, k])
    return mask


def bounding_box(mask: np.ndarray, pad: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, slice, slice] | None:
    """The smallest box (slices) holding ``mask``'s True voxels, grown by ``pad`` voxels per axis; None if empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(max(0, idx[0] - pad[axis]), min(mask.shape[axis], idx[-1] + 1 + pad[axis])))
    return tuple(box)
