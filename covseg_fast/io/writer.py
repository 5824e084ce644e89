"""Write masks (and probabilities) back onto the input grid, atomically."""
from __future__ import annotations

import nibabel as nib
import numpy as np

from ..atomic import atomic_save
from .volume import Volume, nifti_from_array


def save_mask(path: str, canonical_mask: np.ndarray, volume: Volume) -> None:
    """Save a (X, Y, Z) mask given on the canonical grid as uint8 NIfTI on the input grid.

    The file carries the input's affine, qform/sform (with their codes), pixdim and units, so it
    overlays the input in any viewer. Written atomically (temporary file, then rename).
    """
    img = nifti_from_array(volume.to_source(canonical_mask.astype(np.uint8)), volume, np.uint8)
    atomic_save(path, lambda tmp: nib.save(img, tmp))


def save_probabilities(path: str, canonical_prob: np.ndarray, volume: Volume) -> None:
    """Save probabilities in [0, 1] (canonical grid) as uint8 with a scale factor, on the input grid."""
    prob = np.clip(volume.to_source(canonical_prob.astype(np.float32)), 0.0, 1.0)
    img = nifti_from_array(prob, volume, np.uint8)
    atomic_save(path, lambda tmp: nib.save(img, tmp))
