"""NIfTI reading: orientation, scaling, storage types; mask write-back onto the exact input grid."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from covseg_fast.io import VolumeError, read_nifti, save_mask, save_probabilities
from tests.ct_helpers import axis_affine, oblique_affine, phantom, save_nifti

ORIENTATIONS = {"LPS": axis_affine("LPS"), "RAS": axis_affine("RAS"), "LAS": axis_affine("LAS"),
                "PSL": axis_affine("PSL"), "oblique": oblique_affine(12.0)}


def _world(aff, ijk):
    return (aff @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_canonical_frame_keeps_world_positions(tmp_path, name):
    aff = ORIENTATIONS[name]
    data = np.round(phantom((20, 18, 7)))
    data[2, 3, 1] = 900.0  # a unique marker voxel
    vol = read_nifti(save_nifti(str(tmp_path / "x.nii.gz"), data, aff))
    assert vol.data.dtype == np.float32
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    # the marker is at the same world position in the input and in the canonical frame
    src = np.argwhere(np.round(data) == 900.0)
    can = np.argwhere(vol.data == 900.0)
    np.testing.assert_allclose(_world(aff, src), _world(vol.affine, can), atol=1e-4)
    # every voxel: canonical data == input data at the voxel with the same world position
    ijk = np.argwhere(np.ones(vol.data.shape, bool))[::37]
    src_ijk = np.round((np.linalg.inv(aff) @ np.c_[_world(vol.affine, ijk), np.ones(len(ijk))].T).T[:, :3]).astype(int)
    np.testing.assert_array_equal(vol.data[tuple(ijk.T)], np.round(data).astype(np.float32)[tuple(src_ijk.T)])
    np.testing.assert_allclose(sorted(vol.spacing), sorted(np.sqrt((aff[:3, :3] ** 2).sum(0))), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_mask_round_trip_on_input_grid(tmp_path, name):
    aff = ORIENTATIONS[name]
    data = np.round(phantom((20, 18, 7)))
    vol = read_nifti(save_nifti(str(tmp_path / "x.nii.gz"), data, aff))
    mask_c = vol.data > -500  # computed in the canonical frame
    out = str(tmp_path / "m.nii.gz")
    save_mask(out, mask_c, vol)
    m = nib.load(out)
    assert m.shape == data.shape
    np.testing.assert_allclose(m.affine, aff, atol=1e-5)
    assert int(m.header["qform_code"]) == 1 and int(m.header["sform_code"]) == 1
    # mask voxel (i, j, k) is the image voxel (i, j, k): same array index, same world position
    np.testing.assert_array_equal(np.asarray(m.dataobj).astype(bool), np.round(data) > -500)
    assert m.get_data_dtype() == np.uint8


def test_sform_only_geometry_is_kept(tmp_path):
    aff = axis_affine("LPS")
    vol = read_nifti(save_nifti(str(tmp_path / "x.nii.gz"), phantom((8, 8, 3)), aff, sform_only=True))
    save_mask(str(tmp_path / "m.nii.gz"), vol.data > 0, vol)
    m = nib.load(str(tmp_path / "m.nii.gz"))
    assert int(m.header["qform_code"]) == 0 and int(m.header["sform_code"]) == 2
    np.testing.assert_allclose(m.affine, aff, atol=1e-5)


@pytest.mark.parametrize("dtype,slope,inter", [(np.int16, None, None), (np.uint16, 1.0, -1024.0),
                                               (np.int32, None, None), (np.float32, None, None),
                                               (np.int16, 0.5, -1000.0)])
def test_storage_and_scaling(tmp_path, dtype, slope, inter):
    data = np.round(phantom((10, 9, 4)))
    vol = read_nifti(save_nifti(str(tmp_path / "x.nii.gz"), data, axis_affine("RAS"), dtype=dtype,
                                slope=slope, inter=inter))
    np.testing.assert_allclose(vol.data, data, atol=(slope or 1.0) / 2 + 1e-3)
    assert vol.warnings == []


def test_four_d_with_singleton_time_is_a_volume(tmp_path):
    data = phantom((10, 9, 4))
    vol = read_nifti(save_nifti(str(tmp_path / "x.nii.gz"), data[..., None], axis_affine("LPS")))
    assert vol.data.shape == (10, 9, 4)


def test_non_ct_range_warns(tmp_path):
    vol = read_nifti(save_nifti(str(tmp_path / "x.nii.gz"), np.ones((6, 6, 3)), axis_affine("RAS")))
    assert vol.warnings and "does not look like CT" in vol.warnings[0]


def test_singular_affine_is_refused(tmp_path):
    aff = axis_affine("RAS")
    aff[:3, 2] = 0
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.int16) - 1000, None)
    img.header.set_sform(aff, code=1)  # a singular sform (qform unset)
    nib.save(img, str(tmp_path / "x.nii.gz"))
    with pytest.raises(VolumeError, match="singular"):
        read_nifti(str(tmp_path / "x.nii.gz"))


def test_probabilities_saved_scaled(tmp_path):
    vol = read_nifti(save_nifti(str(tmp_path / "x.nii.gz"), phantom((8, 8, 3)), axis_affine("LAS")))
    prob = np.random.default_rng(0).random(vol.data.shape).astype(np.float32)
    save_probabilities(str(tmp_path / "p.nii.gz"), prob, vol)
    p = nib.load(str(tmp_path / "p.nii.gz"))
    assert p.get_data_dtype() == np.uint8
    np.testing.assert_allclose(p.get_fdata(), vol.to_source(prob), atol=1 / 254)
