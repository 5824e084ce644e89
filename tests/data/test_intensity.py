"""Intensity landmarks of slice images and the per-volume linear map that matches two image sets."""
import numpy as np
import pytest

from covseg_fast.data.intensity import image_landmarks, matching_maps, volume_key, window_for


def _slice(lung: float, tissue: float, seed: int = 0, shape=(120, 120)) -> np.ndarray:
    """A synthetic windowed chest slice: 45 % aerated lung, 45 % soft tissue, a little bone (saturated)."""
    rng = np.random.default_rng(seed)
    g = np.where(rng.random(shape) < 0.5, lung, tissue) + rng.normal(0, 0.015, shape)
    g[:6] = 1.0
    return (np.clip(g, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("lung,tissue", [(0.17, 0.85), (0.06, 0.41), (0.30, 0.90)])
def test_landmarks_find_the_lung_and_soft_tissue_peaks(lung, tissue):
    got = image_landmarks(_slice(lung, tissue))
    assert got == pytest.approx((lung, tissue), abs=0.01)


def test_volume_key_strips_the_slice_number():
    assert volume_key("Data-1_coronacases_org_001_57") == "Data-1_coronacases_org_001"
    assert volume_key("12") == "12" and volume_key("case_a") == "case_a"


def test_matching_maps_move_each_volume_onto_the_reference():
    source = {f"a_{i}": (0.06 + 0.002 * i, 0.41) for i in range(5)} | {f"b_{i}": (0.30, 0.90) for i in range(3)}
    maps = matching_maps(source, (0.17, 0.85))
    assert len({maps[k] for k in source if k.startswith("a_")}) == 1      # one map per volume
    for prefix, (lung, tissue) in (("a_", (0.064, 0.41)), ("b_", (0.30, 0.90))):
        scale, offset = maps[prefix + "0"]
        assert scale * lung + offset == pytest.approx(0.17) and scale * tissue + offset == pytest.approx(0.85)
    with pytest.raises(ValueError, match="soft tissue"):
        matching_maps({"c_1": (0.5, 0.4)}, (0.17, 0.85))


def test_window_for_inverts_the_windowing():
    lo, hi = -1100.0, 250.0
    marks_hu = (-870.0, 40.0)
    marks_grey = tuple((h - lo) / (hi - lo) for h in marks_hu)
    assert window_for(marks_grey, marks_hu) == pytest.approx((lo, hi))


def test_pseudo_folder_is_matched_to_the_labelled_folder(tmp_path):
    """open_pseudo_folder(intensity="match"): the pseudo images come out at the labelled images' landmarks."""
    import os

    from PIL import Image

    from covseg_fast.train.datasets import open_pseudo_folder

    def folder(root, marks, names):
        os.makedirs(root / "Imgs"), os.makedirs(root / "GT")
        for i, name in enumerate(names):
            Image.fromarray(_slice(*marks, seed=i)).save(root / "Imgs" / f"{name}.png")
            Image.fromarray(np.zeros((120, 120), np.uint8)).save(root / "GT" / f"{name}.png")
        return str(root)

    labelled = folder(tmp_path / "lab", (0.17, 0.85), ["1", "2", "3"])
    pseudo = folder(tmp_path / "ps", (0.06, 0.41), ["vol_a_1", "vol_a_2"])
    as_is = open_pseudo_folder(pseudo, 120, seed=0, augment="none")
    matched = open_pseudo_folder(pseudo, 120, seed=0, augment="none", intensity="match", labelled=labelled)
    assert image_landmarks(as_is[0]["image"][0].numpy()) == pytest.approx((0.06, 0.41), abs=0.01)
    assert image_landmarks(matched[0]["image"][0].numpy()) == pytest.approx((0.17, 0.85), abs=0.015)
    with pytest.raises(ValueError, match="labelled slice folder"):
        open_pseudo_folder(pseudo, 120, seed=0, augment="none", intensity="match")
