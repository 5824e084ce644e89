"""The anatomy and the restricted infection on the real chest CTs in ../shared/data/ct (skipped without them)."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from covseg_fast.cli.main import main
from covseg_fast.cli.screen import DEMO_VOLUME
from covseg_fast.inference.anatomy import LEFT_LUNG, RIGHT_LUNG, compute_anatomy
from covseg_fast.inference.anatomy.margin import ball_dilation
from covseg_fast.io import read_nifti
from tests.ct_helpers import reoriented, save_nifti
from tests.inference.tiny_model import make_checkpoint

pytestmark = pytest.mark.data

CT = {"lpcd": "ct/lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz",
      "cip": "ct/cip_copdgene_ct64/ct-64_LPS.nii.gz",
      "totalseg": "ct/totalseg_ct_cropped/ct_cropped.nii.gz"}


@pytest.fixture(scope="module")
def lpcd(shared_data):
    v = read_nifti(os.path.join(shared_data, CT["lpcd"]))
    return v, compute_anatomy(v.data, v.spacing, v.voxel_ml)


def test_cip_lung_volume_within_10_percent_of_its_whole_lung_label(shared_data):
    d = os.path.join(shared_data, "ct", "cip_copdgene_ct64")
    v = read_nifti(os.path.join(d, "ct-64_LPS.nii.gz"))
    a = compute_anatomy(v.data, v.spacing, v.voxel_ml)
    ref = read_nifti(os.path.join(d, "wholeLung-64_LPS.nii.gz")).data > 0
    lung = (a.labels == RIGHT_LUNG) | (a.labels == LEFT_LUNG)
    assert a.checks["passed"], a.checks["failed"]
    assert a.checks["lung_mask_ml"] == pytest.approx(ref.sum() * v.voxel_ml, rel=0.10)
    assert 2 * (lung & ref).sum() / (lung.sum() + ref.sum()) > 0.95
    # the CIP region labels: 9-11 the left lung's thirds, 12-14 the right lung's
    regions = read_nifti(os.path.join(d, "lm-64_LPS.nii.gz")).data
    left_ref, right_ref = np.isin(regions, (9, 10, 11)), np.isin(regions, (12, 13, 14))
    assert (a.labels[left_ref & lung] == LEFT_LUNG).mean() > 0.99
    assert (a.labels[right_ref & lung] == RIGHT_LUNG).mean() > 0.99


def test_lung_pet_ct_lungs_plausible(lpcd):
    v, a = lpcd
    c = a.checks
    assert c["passed"], c["failed"]
    assert 4000 < c["lung_mask_ml"] < 7000 and 0.6 < c["balance"] < 1 and c["right_ml"] > c["left_ml"]
    assert 10 < c["airway_ml"] < 80  # trachea and main bronchi taken out
    lung = (a.labels == RIGHT_LUNG) | (a.labels == LEFT_LUNG)
    assert lung[:, :, :8].sum() < 0.01 * lung.sum()  # the lowest 40 mm are abdomen: no stomach or bowel gas


def test_lower_chest_as_las_uint16_with_scl_inter_keeps_the_lung_bases(lpcd, tmp_path):
    """The issue's lower-chest/abdomen scan: the lowest 28 slices (140 mm), stored LAS uint16 with scl_inter."""
    v, a = lpcd
    k = 28
    low = np.ascontiguousarray(v.data[:, :, :k])
    stored, aff = reoriented(low, v.spacing, "LAS")
    path = save_nifti(str(tmp_path / "low.nii.gz"), stored, aff, dtype=np.uint16, slope=1.0, inter=-1024.0)
    w = read_nifti(path)
    np.testing.assert_array_equal(w.data, low)
    b = compute_anatomy(w.data, w.spacing, w.voxel_ml)
    want = a.labels[:, :, :k]
    want = np.where(want <= LEFT_LUNG, want, 0)
    got = np.where(b.labels <= LEFT_LUNG, b.labels, 0)
    assert ((got > 0) == (want > 0)).mean() > 0.999 and (got[want > 0] == want[want > 0]).mean() > 0.99
    assert 2000 < b.checks["lung_mask_ml"] < 3500  # the bases only: about 2.7 L, not 10 L with table and gas
    assert any("last (highest) slice cuts through" in f for f in b.checks["failed"])


def test_a_few_slices_are_a_partial_scan(lpcd):
    v, _ = lpcd
    few = np.ascontiguousarray(v.data[:, :, 30:34])
    c = compute_anatomy(few, v.spacing, v.voxel_ml).checks
    assert c["lung_mask_ml"] < 1000 and not c["passed"]
    assert any("lung volume" in f for f in c["failed"]) and any("span 20 mm" in f for f in c["failed"])


def test_real_volumes_screened_have_no_infection_outside_the_dilated_lungs(shared_data, tmp_path):
    """Every real volume: the written mask is the model's (the tiny model marks all tissue above -425 HU)
    within 5 mm of the lung mask, and nothing outside it."""
    ckpt = make_checkpoint(str(tmp_path / "tiny.pt"))
    inp = tmp_path / "in"
    inp.mkdir()
    for name, rel in CT.items():
        os.symlink(os.path.join(shared_data, rel), inp / f"{name}.nii.gz")
    os.symlink(DEMO_VOLUME, inp / "demo.nii.gz")
    out = tmp_path / "out"
    assert main(["screen", str(inp), "-o", str(out), "--checkpoint", ckpt, "--no-progress", "--workers", "1",
                 "--no-montage", "--save-unrestricted-mask", "--save-lung-mask"]) == 0
    for name in [*CT, "demo"]:
        src = nib.load(str(inp / f"{name}.nii.gz"))
        mask = np.asarray(nib.load(str(out / f"{name}_infection.nii.gz")).dataobj) > 0
        raw = np.asarray(nib.load(str(out / f"{name}_infection_unrestricted.nii.gz")).dataobj) > 0
        lung = np.asarray(nib.load(str(out / f"{name}_lungmask.nii.gz")).dataobj) > 0
        allowed = ball_dilation(lung, 5.0, nib.affines.voxel_sizes(src.affine)) | lung
        assert np.count_nonzero(mask & ~allowed) == 0, name
        np.testing.assert_array_equal(mask, raw & allowed, err_msg=name)
        assert np.count_nonzero(raw & ~allowed) > 0, name  # the model did mark tissue outside: it was excluded
        rec = json.load(open(out / f"{name}.json"))
        vox = abs(np.linalg.det(src.affine[:3, :3])) / 1000
        assert rec["infected_ml"] == pytest.approx(mask.sum() * vox, abs=0.01)
        assert rec["excluded_outside_lung_ml"] == pytest.approx((raw & ~allowed).sum() * vox, abs=0.01)
        assert rec["status"] == ("warning" if name == "totalseg" else "ok"), (name, rec["warnings"])
    tot = json.load(open(out / "totalseg.json"))
    assert 1500 < tot["lung_checks"]["lung_mask_ml"] < 4000  # a chest crop: part of both lungs
    assert any("edge of the image" in w for w in tot["warnings"])
