"""The model-free anatomy (covseg_fast.inference.anatomy) on synthetic chests: body, lungs, airway, margin, checks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covseg_fast.inference.anatomy import LEFT_LUNG, LEFT_MARGIN, RIGHT_LUNG, RIGHT_MARGIN, compute_anatomy
from covseg_fast.inference.anatomy.body import body_mask
from covseg_fast.inference.anatomy.margin import ball_dilation
from covseg_fast.inference.burden import case_statistics, class_names, restrict
from tests.ct_helpers import chest_phantom

SPACING = (4.0, 4.0, 5.0)
VOX_ML = 4.0 * 4.0 * 5.0 / 1000


@pytest.fixture(scope="module")
def chest():
    return chest_phantom(spacing=SPACING)


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_the_table_air_the_old_mask_took_is_outside_the_body(chest):
    hu, truth = chest
    table = truth["table_air"]
    # what made the old mask (two largest air components after removing border-touching air per slice) count
    # the table as lung: its air touches no slice border, and it is a 3-D component of over a litre
    assert not (table[0].any() or table[-1].any() or table[:, 0].any() or table[:, -1].any())
    assert table.sum() * VOX_ML > 1000 and ndimage.label(table)[1] == 1
    body = body_mask(hu, SPACING)
    assert not (body.inside & table).any()                      # the table and its air are not the patient
    assert not body.inside[hu < -1500].any()                     # nor the padding outside the field of view
    lungs = truth["right"] | truth["left"]
    assert body.inside[lungs].all() and body.inside[truth["stomach"]].all()


def test_lungs_right_left_without_gas_table_and_trachea(chest):
    hu, truth = chest
    a = compute_anatomy(hu, SPACING, VOX_ML)
    right, left = a.labels == RIGHT_LUNG, a.labels == LEFT_LUNG
    assert _dice(right, truth["right"]) > 0.98 and _dice(left, truth["left"]) > 0.98
    assert not (right & truth["left"]).any() and not (left & truth["right"]).any()
    lung = right | left
    for name in ("stomach", "bowel", "table_air"):
        assert not (lung & truth[name]).any(), name
    assert (lung & truth["airway"]).sum() < 0.2 * truth["airway"].sum()   # trachea and main bronchi out
    c = a.checks
    assert c["passed"] and c["failed"] == []
    assert c["gas_ml"] == pytest.approx(truth["stomach"].sum() * VOX_ML)       # median -1000 HU: gas
    assert c["below_lung_ml"] == pytest.approx(truth["bowel"].sum() * VOX_ML)  # lung-like HU, under a lung
    assert c["airway_ml"] > 0.7 * truth["airway"].sum() * VOX_ML
    assert c["lung_mask_ml"] == pytest.approx(lung.sum() * VOX_ML, abs=1e-3)
    assert c["right_ml"] > c["left_ml"] and 0.5 < c["balance"] < 1


def test_margin_is_the_lungs_dilated_by_5_mm_on_their_own_side(chest):
    hu, truth = chest
    a = compute_anatomy(hu, SPACING, VOX_ML)
    lung = (a.labels == RIGHT_LUNG) | (a.labels == LEFT_LUNG)
    margin = (a.labels == RIGHT_MARGIN) | (a.labels == LEFT_MARGIN)
    np.testing.assert_array_equal(margin, ball_dilation(lung, 5.0, SPACING) & ~lung)
    x = np.arange(hu.shape[0])[:, None, None]
    assert (x[np.nonzero(a.labels == RIGHT_MARGIN)[0]] > hu.shape[0] / 2 - 10).all()
    # each lung's margin touches that lung
    for lung_lbl, margin_lbl in ((RIGHT_LUNG, RIGHT_MARGIN), (LEFT_LUNG, LEFT_MARGIN)):
        near = ball_dilation(a.labels == lung_lbl, 5.0, SPACING)
        assert near[a.labels == margin_lbl].mean() > 0.95


@pytest.mark.parametrize("spacing", [(0.84, 0.84, 5.0), (1.5, 1.5, 1.5), (3.37, 3.37, 5.0), (0.7, 0.9, 2.5)])
def test_ball_dilation_is_exact(spacing):
    rng = np.random.default_rng(1)
    m = rng.random((40, 37, 23)) > 0.995
    rad = [int(np.floor(5.0 / s + 1e-9)) for s in spacing]
    g = np.ogrid[tuple(slice(-q, q + 1) for q in rad)]
    ball = sum((gi * s) ** 2 for gi, s in zip(g, spacing)) <= 25.0 + 1e-9
    np.testing.assert_array_equal(ball_dilation(m, 5.0, spacing), ndimage.binary_dilation(m, structure=ball))
    assert not ball_dilation(np.zeros((5, 5, 5), bool), 5.0, spacing).any()


def test_lower_chest_scan_is_a_warning_with_the_lung_bases_right(chest):
    hu, truth = chest
    k = 30  # the lowest 150 mm: lung bases, stomach, bowel, table (the lower-chest/abdomen scan)
    a = compute_anatomy(np.ascontiguousarray(hu[:, :, :k]), SPACING, VOX_ML)
    lung = (a.labels == RIGHT_LUNG) | (a.labels == LEFT_LUNG)
    want = (truth["right"] | truth["left"])[:, :, :k]
    assert _dice(lung, want) > 0.97
    for name in ("stomach", "bowel", "table_air"):
        assert not (lung & truth[name][:, :, :k]).any(), name
    assert not a.checks["passed"]
    assert any("last (highest) slice cuts through the lungs" in f for f in a.checks["failed"])


def test_partial_scan_and_missing_lung_are_warnings(chest):
    hu, truth = chest
    few = np.ascontiguousarray(hu[:, :, 30:34])  # 4 slices (20 mm) of the mid chest: ~0.3 L of lung
    c = compute_anatomy(few, SPACING, VOX_ML).checks
    assert c["lung_mask_ml"] < 1500 and not c["passed"]
    text = " | ".join(c["failed"])
    assert "lung volume" in text and "span 20 mm" in text and "slices cut through the lungs" in text
    filled = hu.copy()
    filled[truth["left"]] = 30.0  # the left lung consolidated (or an effusion): no air left in it
    c = compute_anatomy(filled, SPACING, VOX_ML).checks
    assert c["left_ml"] < 0.1 * c["right_ml"] and any("left lung holds" in f for f in c["failed"])


def test_cropped_field_of_view_keeps_lungs_open_to_the_edge(chest):
    hu, truth = chest
    crop = np.s_[22:74, 10:86, :]  # the lateral chest wall cut off: the lungs reach the image's left/right edges
    sub = np.ascontiguousarray(hu[crop])
    a = compute_anatomy(sub, SPACING, VOX_ML)
    lung = (a.labels == RIGHT_LUNG) | (a.labels == LEFT_LUNG)
    want = (truth["right"] | truth["left"])[crop]
    assert (lung[0].any() or lung[-1].any()) and _dice(lung, want) > 0.95
    assert any("edge of the image" in f for f in a.checks["failed"])


def test_no_lung_in_a_volume_without_air_and_bad_shapes():
    solid = np.full((40, 40, 10), 40.0, dtype=np.float32)
    a = compute_anatomy(solid, SPACING, VOX_ML)
    assert not a.labels.any() and "no lung found" in a.checks["failed"][0] and a.checks["balance"] is None
    air = np.full((40, 40, 10), -1000.0, dtype=np.float32)  # nothing but air: no body, no lung
    assert not compute_anatomy(air, SPACING, VOX_ML).labels.any()
    with pytest.raises(ValueError, match="3-D"):
        compute_anatomy(np.zeros((8, 8), np.float32), SPACING, VOX_ML)


def test_statistics_count_infection_in_lungs_and_margin_only(chest):
    hu, _ = chest
    a = compute_anatomy(hu, SPACING, VOX_ML)
    rng = np.random.default_rng(0)
    classes = (rng.random(hu.shape) < 0.1).astype(np.uint8) * rng.integers(1, 3, hu.shape).astype(np.uint8)
    counted, excluded = restrict(classes, a)
    assert not counted[a.labels == 0].any() and excluded == np.count_nonzero(classes[a.labels == 0])
    s = case_statistics(counted, a, VOX_ML, excluded, class_names(3))
    n = {v: np.count_nonzero(a.labels == v) for v in range(5)}
    inf = {v: np.count_nonzero(counted[a.labels == v]) for v in range(5)}
    lung_r = n[RIGHT_LUNG] + inf[RIGHT_MARGIN]
    assert s["lung_right_ml"] == pytest.approx(lung_r * VOX_ML, abs=1e-3)
    assert s["infected_right_ml"] == pytest.approx((inf[RIGHT_LUNG] + inf[RIGHT_MARGIN]) * VOX_ML, abs=1e-3)
    assert s["burden_right_pct"] == pytest.approx(100 * (inf[RIGHT_LUNG] + inf[RIGHT_MARGIN]) / lung_r, abs=1e-3)
    assert s["infected_ml"] == pytest.approx(s["infected_right_ml"] + s["infected_left_ml"], abs=1e-2)
    assert s["ggo_ml"] + s["consolidation_ml"] == pytest.approx(s["infected_ml"], abs=1e-2)
    assert s["excluded_outside_lung_ml"] == pytest.approx(excluded * VOX_ML, abs=1e-3)
    none = case_statistics(np.zeros(hu.shape, np.uint8), a, VOX_ML, 0)
    assert none["infected_ml"] == 0 and none["burden_pct"] == 0 and "ggo_ml" not in none
    solid = compute_anatomy(np.full((20, 20, 4), 40.0, np.float32), SPACING, VOX_ML)
    empty = case_statistics(np.ones((20, 20, 4), np.uint8), solid, VOX_ML, 1600)
    assert empty["lung_ml"] == 0 and empty["burden_pct"] is None and empty["excluded_outside_lung_ml"] == 1600 * VOX_ML
    assert class_names(1) == () and class_names(3) == ("ggo", "consolidation") and class_names(4)[-1] == "class3"
