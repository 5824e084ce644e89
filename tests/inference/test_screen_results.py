"""`covseg screen` results a user can trust: infection inside the lungs, reports that say what they are,
statuses, multi-class models, the montage (synthetic chests; the real CTs are in test_anatomy_real.py)."""
from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from covseg_fast.cli.main import main
from covseg_fast.inference.anatomy.margin import ball_dilation
from covseg_fast.inference.report import SUMMARY_COLUMNS
from covseg_fast.models.registry import get_model, save_checkpoint
from tests.ct_helpers import axis_affine, chest_phantom, reoriented, save_nifti
from tests.inference.tiny_model import make_checkpoint

SPACING = (4.0, 4.0, 5.0)
PROVENANCE = {"data": "synthetic test slices", "licence": "CC0 (test only)", "command": "covseg train ..."}


def screen(*args) -> int:
    return main(["screen", "--no-progress", "--workers", "0", *map(str, args)])


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ck") / "tiny.pt"), provenance=PROVENANCE)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """The whole chest phantom (plausible lungs: status ok) as RAS int16 NIfTI, and its truth."""
    hu, truth = chest_phantom(spacing=SPACING)
    folder = tmp_path_factory.mktemp("chest")
    stored, aff = reoriented(np.round(hu), SPACING, "RAS")
    save_nifti(str(folder / "chest.nii.gz"), stored, aff)
    return folder, hu, truth


def test_table_phantom_lower_chest_las_uint16(tmp_path, ckpt):
    """The issue's table-air failure: a lower-chest/abdomen scan, LAS, uint16 with scl_inter, -2048 padding
    outside the field of view, a hollow table under the patient, stomach and bowel gas under the lungs."""
    hu, truth = chest_phantom(spacing=SPACING)
    k = 30
    stored, aff = reoriented(np.ascontiguousarray(hu[:, :, :k]), SPACING, "LAS")
    inp = tmp_path / "in"
    inp.mkdir()
    save_nifti(str(inp / "lower.nii.gz"), stored, aff, dtype=np.uint16, slope=1.0, inter=-2048.0)
    out = tmp_path / "out"
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--save-lung-mask", "--save-unrestricted-mask") == 0
    lung = np.asarray(nib.load(str(out / "lower_lungmask.nii.gz")).dataobj)
    to_las = {name: reoriented(m[:, :, :k].astype(np.uint8), SPACING, "LAS")[0] > 0 for name, m in truth.items()}
    for name in ("table_air", "stomach", "bowel"):
        assert not (lung > 0)[to_las[name]].any(), name
    want = to_las["right"] | to_las["left"]
    assert 2 * ((lung > 0) & want).sum() / ((lung > 0).sum() + want.sum()) > 0.97
    assert (lung[to_las["right"] & (lung > 0)] == 1).all() and (lung[to_las["left"] & (lung > 0)] == 2).all()
    rec = json.load(open(out / "lower.json"))
    assert rec["status"] == "warning" and rec["burden_trustworthy"] is False
    assert any("cuts through the lungs" in w for w in rec["warnings"])
    assert rec["lung_checks"]["lung_mask_ml"] == pytest.approx(want.sum() * 0.08, rel=0.03)
    mask = np.asarray(nib.load(str(out / "lower_infection.nii.gz")).dataobj) > 0
    raw = np.asarray(nib.load(str(out / "lower_infection_unrestricted.nii.gz")).dataobj) > 0
    allowed = ball_dilation(lung > 0, 5.0, nib.affines.voxel_sizes(aff)) | (lung > 0)
    assert not (mask & ~allowed).any()
    table = ndimage.binary_dilation(to_las["table_air"])  # the table: its shell and the air inside
    assert (raw & table).sum() > 100 and not (mask & table).any()  # the model marks the table: never counted
    assert rec["excluded_outside_lung_ml"] == pytest.approx((raw & ~allowed).sum() * 0.08, abs=1e-3)


def test_reports_say_what_they_are(chest, tmp_path, ckpt):
    folder, hu, truth = chest
    out = tmp_path / "out"
    assert screen(folder / "chest.nii.gz", "-o", out, "--checkpoint", ckpt) == 0
    rec = json.load(open(out / "chest.json"))
    assert rec["status"] == "ok" and rec["warnings"] == [] and rec["burden_trustworthy"] is True
    assert rec["lung_checks"]["passed"] and rec["lung_checks"]["margin_mm"] == 5.0
    assert rec["model"] == "tiny_screen_test" and rec["model_parameters"] == 4 * 9 + 4 + 4 * 9 + 1
    assert rec["training_data"] == PROVENANCE["data"] and rec["licence"] == PROVENANCE["licence"]
    assert rec["provenance"] == PROVENANCE and rec["device"] == "cpu" and rec["backend"] == "torch"
    assert rec["decision"] == "threshold" and rec["threshold"] == 0.5 and rec["window_hu"] == [-1250.0, 250.0]
    assert rec["note"] == "research use, not a medical device"
    truth_ml = (truth["right"].sum() + truth["left"].sum()) * 0.08
    assert rec["lung_checks"]["lung_mask_ml"] == pytest.approx(truth_ml, rel=0.03)
    for side in ("right", "left"):
        assert rec[f"burden_{side}_pct"] == pytest.approx(100 * rec[f"infected_{side}_ml"] / rec[f"lung_{side}_ml"],
                                                          abs=1e-3)
    rows = _rows(out / "summary.csv")
    assert list(rows[0]) == SUMMARY_COLUMNS
    row = rows[0]
    assert row["status"] == "ok" and row["resumed"] == "false" and row["note"] == "research use, not a medical device"
    assert row["training_data"] == PROVENANCE["data"] and row["model_parameters"] == str(rec["model_parameters"])
    assert float(row["lung_left_ml"]) == pytest.approx(rec["lung_left_ml"], abs=1e-3)
    text = (out / "summary.csv").read_text()
    assert "None" not in text and "nan" not in text.lower()


def test_warning_cases_are_complete_for_resume_and_keep_their_status(chest, tmp_path, ckpt, caplog):
    folder, hu, _ = chest
    inp = tmp_path / "in"
    inp.mkdir()
    os.symlink(folder / "chest.nii.gz", inp / "chest.nii.gz")
    stored, aff = reoriented(np.round(hu[:, :, 30:34]), SPACING, "LPS")  # a partial scan: 4 slices
    save_nifti(str(inp / "partial.nii.gz"), stored, aff)
    save_nifti(str(inp / "labels.nii.gz"), np.random.default_rng(0).integers(0, 3, (32, 32, 8)), axis_affine("RAS"))
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="covseg.screen")
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    status = {r["case_id"]: r for r in _rows(out / "summary.csv")}
    assert {c: r["status"] for c, r in status.items()} == {"chest": "ok", "partial": "warning", "labels": "warning"}
    assert "lung volume" in status["partial"]["warnings"] and status["partial"]["burden_trustworthy"] == "false"
    assert "does not look like CT" in status["labels"]["warnings"]  # the volume's io warning
    assert status["labels"]["burden_pct"] == ""  # no lung: an empty cell, never "None"
    assert "done: 1 ok, 2 with warnings" in caplog.text
    before = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f.endswith(".json") and "summary" not in f}
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0
    rows = {r["case_id"]: r for r in _rows(out / "summary.csv")}
    assert {c: (r["status"], r["resumed"]) for c, r in rows.items()} == {
        "chest": ("ok", "true"), "partial": ("warning", "true"), "labels": ("warning", "true")}
    assert {f: os.stat(out / f).st_mtime_ns for f in before} == before  # nothing screened again


def test_inputs_that_are_not_ct_in_hu_are_warnings_never_ok(chest, tmp_path, ckpt):
    """Issue 24: a label map and an 8-bit image are screened with status warning, the reason (io's not-CT
    warning) in the JSON record and in summary.csv. A chest whose lung-mask checks pass but whose values are
    not CT-like (one voxel at 50000 HU) is a warning too: the volume's warning alone decides, not the checks."""
    folder, hu, _ = chest
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(1)
    save_nifti(str(inp / "labels.nii.gz"), rng.integers(0, 3, (48, 48, 16)), axis_affine("RAS"), dtype=np.uint8)
    save_nifti(str(inp / "eight_bit.nii.gz"), rng.integers(0, 256, (48, 48, 16)), axis_affine("RAS"), dtype=np.uint8)
    hot = np.round(hu)
    hot[0, 0, 0] = 50000.0  # outside the body: the anatomy is that of the plain chest
    stored, aff = reoriented(hot, SPACING, "RAS")
    save_nifti(str(inp / "hot.nii.gz"), stored, aff, dtype=np.float32)
    out = tmp_path / "out"
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    rows = {r["case_id"]: r for r in _rows(out / "summary.csv")}
    words = {"labels": "looks like a label map (3 distinct integer values in [0, 2])",
             "eight_bit": "looks like an 8-bit image (integer values in [0, 255])",
             "hot": "intensity range [-2048, 50000] does not look like CT in HU"}
    for case, why in words.items():
        rec = json.load(open(out / f"{case}.json"))
        assert rec["status"] == "warning" and rec["burden_trustworthy"] is False, (case, rec["status"])
        assert any(why in w for w in rec["warnings"]), (case, rec["warnings"])
        row = rows[case]
        assert row["status"] == "warning" and why in row["warnings"] and row["burden_trustworthy"] == "false", row
    hot_rec = json.load(open(out / "hot.json"))
    assert hot_rec["lung_checks_passed"] is True and rows["hot"]["lung_checks_passed"] == "true"
    assert hot_rec["warnings"] == [w for w in hot_rec["warnings"] if "does not look like CT in HU" in w]


def test_multiclass_checkpoint_gives_a_label_mask_and_per_class_volumes(chest, tmp_path):
    folder, hu, truth = chest
    ckpt = make_checkpoint(str(tmp_path / "mc.pt"), multiclass=True)
    out = tmp_path / "out"
    assert screen(folder / "chest.nii.gz", "-o", out, "--checkpoint", ckpt, "--save-label-map",
                  "--save-unrestricted-mask", "--save-probabilities") == 0
    raw = np.asarray(nib.load(str(out / "chest_infection_unrestricted.nii.gz")).dataobj)
    mask = np.asarray(nib.load(str(out / "chest_infection.nii.gz")).dataobj)
    assert set(np.unique(raw)) == {0, 1, 2} and set(np.unique(mask)) <= {0, 1, 2}
    grey = np.clip((np.round(hu) + 1250) / 1500, 0, 1)  # on the stored RAS grid = canonical
    want = np.where(grey >= 0.925, 2, np.where(grey >= 0.55, 1, 0))
    assert (raw == want).mean() > 0.95  # away from edges blurred by resizing to the model's 64×64
    labels = np.asarray(nib.load(str(out / "chest_labelmap.nii.gz")).dataobj)
    np.testing.assert_array_equal(labels[mask > 0], 2 + mask[mask > 0])  # 3 GGO, 4 consolidation
    assert set(np.unique(labels[mask == 0])) <= {0, 1, 2}
    rec = json.load(open(out / "chest.json"))
    assert rec["classes"] == ["ggo", "consolidation"] and rec["decision"] == "argmax" and rec["threshold"] is None
    vox = 0.08
    assert rec["ggo_ml"] == pytest.approx((mask == 1).sum() * vox, abs=1e-3)
    assert rec["consolidation_ml"] == pytest.approx((mask == 2).sum() * vox, abs=1e-3)
    assert rec["ggo_ml"] + rec["consolidation_ml"] == pytest.approx(rec["infected_ml"], abs=1e-2)
    assert rec["ggo_burden_pct"] == pytest.approx(100 * rec["ggo_ml"] / rec["lung_ml"], abs=1e-3)
    p = nib.load(str(out / "chest_probabilities.nii.gz")).get_fdata()  # P(any infection) = 1 - P(background)
    assert p[raw > 0].mean() > 0.5 > p[raw == 0].mean()
    row = _rows(out / "summary.csv")[0]
    assert row["ggo_ml"] and row["consolidation_burden_pct"] and row["threshold"] == ""
    cols = list(row)
    assert cols.index("ggo_ml") == cols.index("excluded_outside_lung_ml") + 1


def test_msa_unet_trained_multiclass_screens(tmp_path):
    """A checkpoint of `covseg train --multiclass --config num_classes=3` (MSA-UNet, 3 logit channels): no
    shape error, a label mask with classes 0..2."""
    torch.manual_seed(0)
    path = str(tmp_path / "msa3.pt")
    save_checkpoint(path, get_model("msa_unet", base=4, num_classes=3))
    inp = tmp_path / "in"
    inp.mkdir()
    hu, _ = chest_phantom(shape=(48, 48, 2), spacing=(8.0, 8.0, 10.0), table=False, trachea=False, gas=False)
    save_nifti(str(inp / "small.nii.gz"), np.round(hu), axis_affine("RAS", (8.0, 8.0, 10.0)))
    out = tmp_path / "out"
    assert screen(inp, "-o", out, "--checkpoint", path, "--save-unrestricted-mask", "--batch-size", 2) == 0
    raw = np.asarray(nib.load(str(out / "small_infection_unrestricted.nii.gz")).dataobj)
    assert raw.shape == (48, 48, 2) and set(np.unique(raw)) <= {0, 1, 2}
    rec = json.load(open(out / "small.json"))
    assert rec["classes"] == ["ggo", "consolidation"] and "consolidation_burden_pct" in rec


def test_montage_names_the_case_and_shows_outlines_infection_and_legend(chest, tmp_path, ckpt):
    from PIL import Image

    from covseg_fast.inference.montage import LEFT_COLOUR, RIGHT_COLOUR

    folder, _, _ = chest
    out = tmp_path / "out"
    assert screen(folder / "chest.nii.gz", "-o", out, "--checkpoint", ckpt) == 0
    img = np.asarray(Image.open(out / "chest_overlay.png").convert("RGB"))
    assert img.shape == (44 + 2 * 256 + 24, 768, 3)
    tiles = img[44:44 + 512]
    for colour in (RIGHT_COLOUR, LEFT_COLOUR):  # lung outlines in every tile
        hit = np.all(tiles == colour, axis=-1)
        assert all(hit[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256].sum() > 20 for r in range(2) for c in range(3))
    red = (tiles[..., 0] > 150) & (tiles[..., 1] < 100) & (tiles[..., 2] < 100)
    assert red.sum() > 100  # infection (the tiny model's bright tissue inside the lungs' margin)
    assert (img[:44] > 200).all(axis=-1).sum() > 200 and (img[-24:] > 200).all(axis=-1).sum() > 100  # text
