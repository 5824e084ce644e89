"""A documented, model-free lung mask for lung volume and infection burden.

Algorithm (on the canonical RAS+ grid, axial slices ``data[:, :, k]``):

1. candidate = voxels with HU < ``threshold_hu`` (default -320: air and aerated lung);
2. in every axial slice, remove the 2-D connected components of the candidate that touch the slice
   border (air outside the body, the table gap, padding outside the scan's field of view);
3. label 3-D (6-connected) components of what remains; keep the largest and, if present, the second
   largest when it is at least ``min_fraction`` of the largest (the two lungs; they are often joined
   through the trachea and then form one component); drop everything else (bowel gas, small pockets);
4. fill holes in every axial slice (vessels, nodules and dense infection inside the lung);
5. lung volume (mL) = voxel count × voxel volume from the affine.

This is a screening aid, not a validated segmentation: dense consolidation that touches the
pleura can be cut out of the mask (step 4 only fills holes fully enclosed within a slice).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _inplane_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 4-connected components within each axial slice (no connection across slices), in one call."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.label(mask, structure=structure)


def _touching_xy_border(lab: np.ndarray, n: int) -> np.ndarray:
    """Lookup table (n+1,) bool: label touches the in-plane border of its slice."""
    faces = np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel()])
    table = np.zeros(n + 1, dtype=bool)
    table[np.unique(faces)] = True
    table[0] = False
    return table


def lung_mask(data: np.ndarray, threshold_hu: float = -320.0, min_fraction: float = 0.1) -> np.ndarray:
    """(X, Y, Z) HU volume → (X, Y, Z) bool lung mask (algorithm in the module docstring).

    Raises:
        ValueError: ``data`` is not 3-D.
    """
    if data.ndim != 3:
        raise ValueError(f"lung_mask: expected a 3-D volume, got shape {data.shape}")
    cand = data < threshold_hu
    lab, n = _inplane_components(cand)                 # step 2: per-slice components ...
    cand &= ~_touching_xy_border(lab, n)[lab]          # ... touching the slice border are outside air
    lab, n = ndimage.label(cand)                       # step 3: 3-D components
    if n == 0:
        return np.zeros(data.shape, dtype=bool)
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    keep = np.zeros(n + 1, dtype=bool)
    keep[order[0] + 1] = True
    if n > 1 and sizes[order[1]] >= min_fraction * sizes[order[0]]:
        keep[order[1] + 1] = True
    mask = keep[lab]
    bg, nb = _inplane_components(~mask)                # step 4: background enclosed within its slice
    holes = ~_touching_xy_border(bg, nb)
    holes[0] = False
    mask |= holes[bg]
    return mask


def volume_ml(mask: np.ndarray, voxel_ml: float) -> float:
    """Volume of a boolean mask in millilitres."""
    return float(np.count_nonzero(mask)) * float(voxel_ml)
