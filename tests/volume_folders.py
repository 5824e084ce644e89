"""Synthetic labelled CT volumes (NIfTI) in the public layouts, for data and CLI tests."""
import os

import nibabel as nib
import numpy as np


def save_nifti(path, data, affine):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def phantom(shape=(16, 12, 6), lesion_slices=(2, 3), seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1000, 100, shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    for k in lesion_slices:
        mask[3:7, 2:5, k] = 1
    return hu, mask


LPS = np.diag([-0.8, -0.8, 2.5, 1.0])  # L→R flipped, P→A flipped: stored in LPS order


def write_ma_layout(root, n=4):
    for i in range(n):
        hu, mask = phantom(seed=i)
        save_nifti(f"{root}/COVID-19-CT-Seg_20cases/coronacases_{i:03d}.nii.gz", hu, LPS)
        save_nifti(f"{root}/Infection_Mask/coronacases_{i:03d}.nii.gz", mask, LPS)
