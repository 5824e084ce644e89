"""The three real CT volumes in ../shared/data/ct, and the DICOM series against its NIfTI."""
from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from covseg_fast.io import VolumeError, discover, read_dicom_series, read_nifti

pytestmark = pytest.mark.data

A0001 = "ct/lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz"
DICOM = "ct/lung_pet_ct_dx_A0001/dicom"
VOLUMES = {A0001: ((512, 512, 64), (0.8418, 0.8418, 5.0)),
           "ct/cip_copdgene_ct64/ct-64_LPS.nii.gz": ((64, 64, 79), (4.1719, 4.1719, 3.9873)),
           "ct/totalseg_ct_cropped/ct_cropped.nii.gz": ((120, 126, 164), (1.5, 1.5, 1.5))}


@pytest.mark.parametrize("rel", sorted(VOLUMES))
def test_real_nifti(shared_data, rel):
    shape, spacing = VOLUMES[rel]
    path = os.path.join(shared_data, rel)
    vol = read_nifti(path)
    img = nib.load(path)
    assert vol.data.shape == shape and vol.source_shape == shape
    np.testing.assert_allclose(vol.spacing, spacing, atol=1e-3)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    # LPS → RAS+ flips the first two axes; HU values are the stored integers
    np.testing.assert_array_equal(vol.data, np.asanyarray(img.dataobj)[::-1, ::-1, :].astype(np.float32))
    assert -1100 <= vol.data.min() <= -900 and vol.data.max() > 300
    assert vol.warnings == []


def test_dicom_series_equals_its_nifti(shared_data):
    nii = read_nifti(os.path.join(shared_data, A0001))
    dcm = read_dicom_series(os.path.join(shared_data, DICOM))
    assert dcm.fmt == "dicom" and dcm.data.shape == nii.data.shape
    np.testing.assert_array_equal(dcm.data, nii.data)          # same HU (uint16 + RescaleIntercept)
    np.testing.assert_allclose(dcm.affine, nii.affine, atol=1e-3)  # same geometry in the canonical frame
    np.testing.assert_allclose(dcm.spacing, nii.spacing, atol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "duplicate"])
def test_real_dicom_damaged(shared_data, tmp_path, damage):
    src = os.path.join(shared_data, DICOM)
    dst = tmp_path / "series"
    shutil.copytree(src, dst)
    names = sorted(os.listdir(dst))
    if damage == "missing":
        os.unlink(dst / names[30])
        match = "missing slices"
    else:
        shutil.copy(dst / names[30], dst / "extra_copy.dcm")
        match = "duplicate slices"
    with pytest.raises(VolumeError, match=match):
        read_dicom_series(str(dst))


def test_discovery_of_the_data_tree(shared_data):
    cases, roots = discover([os.path.join(shared_data, "ct")])
    kinds = {c.case_id: c.kind for c in cases}
    assert kinds["dicom"] == "dicom"
    assert kinds["Lung_Dx-A0001_5mm_kernelL_LPS"] == "nifti" and kinds["ct_cropped"] == "nifti"
    assert len({c.case_id for c in cases}) == len(cases)
    assert cases == discover([os.path.join(shared_data, "ct")])[0]  # stable
