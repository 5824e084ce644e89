"""The HU-threshold + connected-component lung mask."""
from __future__ import annotations

import os

import numpy as np
import pytest

from covseg_fast.inference.lung import lung_mask, volume_ml
from covseg_fast.io import read_nifti
from tests.ct_helpers import phantom


def test_phantom_lungs_found_and_outside_air_removed():
    vol = phantom((48, 40, 6))
    truth = np.abs(vol + 850) < 40
    vol[40:44, 18:22, 2] = -950  # a small gas pocket inside the body: not lung
    m = lung_mask(vol)
    assert m.shape == vol.shape and m.dtype == bool
    assert not m[0, 0, 0]                      # outside air removed
    assert not m[40:44, 18:22, 2].any()        # small pocket dropped
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.97, dice


def test_holes_filled_and_volume_in_ml():
    vol = phantom((48, 40, 6))
    vol[15, 20, :] = 40.0  # a vessel inside the left lung
    m = lung_mask(vol)
    assert m[15, 20, 3]
    assert volume_ml(m, 0.5) == pytest.approx(m.sum() * 0.5)


def test_empty_and_bad_shape():
    assert not lung_mask(np.full((8, 8, 3), 40.0)).any()
    with pytest.raises(ValueError, match="3-D"):
        lung_mask(np.zeros((8, 8)))


@pytest.mark.data
def test_matches_reference_whole_lung_mask(shared_data):
    d = os.path.join(shared_data, "ct", "cip_copdgene_ct64")
    vol = read_nifti(os.path.join(d, "ct-64_LPS.nii.gz"))
    ref = read_nifti(os.path.join(d, "wholeLung-64_LPS.nii.gz")).data > 0
    m = lung_mask(vol.data)
    dice = 2 * (m & ref).sum() / (m.sum() + ref.sum())
    assert dice > 0.95, dice
    assert volume_ml(m, vol.voxel_ml) == pytest.approx(volume_ml(ref, vol.voxel_ml), rel=0.1)
