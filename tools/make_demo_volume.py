"""Build covseg_fast/assets/demo_ct.nii.gz from the Lung-PET-CT-Dx A0001 volume (CC BY 4.0).

512×512×64 at 0.84×0.84×5 mm → 128×128×64 at 3.37×3.37×5 mm by 4×4 in-plane block averaging,
int16 HU, LPS like the original; the affine is recomputed for the new grid (voxel centres move to
the centres of the averaged blocks). Run: ``python tools/make_demo_volume.py [source] [dest]``.
"""
from __future__ import annotations

import sys

import nibabel as nib
import numpy as np

SRC = "../shared/data/ct/lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz"
DST = "covseg_fast/assets/demo_ct.nii.gz"


def downsample(src: str, dst: str, f: int = 4) -> None:
    img = nib.load(src)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    x, y, z = data.shape
    small = data[: x - x % f, : y - y % f].reshape(x // f, f, y // f, f, z).mean(axis=(1, 3))
    scale = np.diag([f, f, 1.0, 1.0])
    scale[:3, 3] = [(f - 1) / 2.0, (f - 1) / 2.0, 0.0]   # new voxel 0 = centre of old block 0..f-1
    affine = img.affine @ scale
    out = nib.Nifti1Image(np.round(small).astype(np.int16), affine)
    out.set_qform(affine, code=int(img.header["qform_code"]) or 1)
    out.set_sform(affine, code=int(img.header["sform_code"]) or 1)
    out.header.set_xyzt_units("mm", "sec")
    out.header["descrip"] = b"Lung-PET-CT-Dx A0001, 4x4 in-plane mean, CC BY 4.0"
    nib.save(out, dst)


if __name__ == "__main__":
    downsample(sys.argv[1] if len(sys.argv) > 1 else SRC, sys.argv[2] if len(sys.argv) > 2 else DST)
