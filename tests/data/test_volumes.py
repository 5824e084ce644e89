"""VolumeSliceDataset on synthetic NIfTI volumes (public layouts), real volumes for reading and
windowing, and patient-level splits."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from covseg_fast.data import (DataError, VolumeSliceDataset, axial_slice, find_cases, fold_parts, load_canonical,
                              load_split, make_split, window_hu)

from ..volume_folders import LPS, phantom, save_nifti, write_ma_layout


def test_find_cases_all_layouts(tmp_path):
    write_ma_layout(tmp_path, 2)
    hu, mask = phantom()
    save_nifti(f"{tmp_path}/studies/CT-1/study_0255.nii.gz", hu, np.eye(4))
    save_nifti(f"{tmp_path}/masks/study_0255_mask.nii.gz", mask, np.eye(4))
    save_nifti(f"{tmp_path}/studies/CT-1/study_0256.nii.gz", hu, np.eye(4))  # no mask → skipped
    save_nifti(f"{tmp_path}/tr_im.nii.gz", hu, np.eye(4))
    save_nifti(f"{tmp_path}/tr_mask.nii.gz", mask * 3, np.eye(4))
    save_nifti(f"{tmp_path}/rp_im/1.nii.gz", hu, np.eye(4))
    save_nifti(f"{tmp_path}/rp_msk/1.nii.gz", mask, np.eye(4))
    ids = [c.case_id for c in find_cases(str(tmp_path))]
    assert ids == ["coronacases_000", "coronacases_001", "study_0255", "medseg_tr", "medseg_rp_1"]
    cases = {c.case_id: c for c in find_cases(str(tmp_path))}
    # MedSeg label 3 (pleural effusion) is not infection
    ds = VolumeSliceDataset([cases["medseg_tr"]], drop_empty=True)
    assert len(ds) == 0


def test_find_cases_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        find_cases(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no labelled CT volumes"):
        find_cases(str(tmp_path))


def test_canonical_reorientation_and_radiological_slices(tmp_path):
    hu, mask = phantom()
    write_ma_layout(tmp_path, 1)
    hu_ras, aff = load_canonical(f"{tmp_path}/COVID-19-CT-Seg_20cases/coronacases_000.nii.gz")
    assert np.allclose(np.diag(aff)[:3], [0.8, 0.8, 2.5])  # canonical: positive diagonal
    assert np.array_equal(hu_ras, hu[::-1, ::-1, :].astype(np.float32))
    # radiological display: rows anterior→posterior, columns patient right→left
    sl = axial_slice(hu_ras, 2)
    assert sl.shape == (12, 16)
    assert sl[0, 0] == hu_ras[15, 11, 2] and sl[11, 15] == hu_ras[0, 0, 2]
    ds = VolumeSliceDataset(find_cases(str(tmp_path)), window=(-1000, 100))
    assert len(ds) == 6
    it = ds[2]
    assert it["id"] == "coronacases_000:0002" and it["slice"] == 2 and it["orig_size"] == (12, 16)
    expected = np.clip((sl - -1000) / 1100, 0, 1)
    assert np.allclose(it["image"][0].numpy(), expected, atol=1e-6)
    assert torch.equal(it["mask"][0], torch.from_numpy(axial_slice(mask[::-1, ::-1, :], 2).astype(np.float32)))
    assert it["mask"].sum() == 12 and torch.equal(it["labels"], it["mask"][0].long())


def test_drop_empty_slices(tmp_path):
    write_ma_layout(tmp_path, 2)
    cases = find_cases(str(tmp_path))
    assert len(VolumeSliceDataset(cases)) == 12
    ds = VolumeSliceDataset(cases, drop_empty=True)
    assert len(ds) == 4 and all(ds[i]["mask"].sum() > 0 for i in range(len(ds)))
    assert sorted(ds[i]["slice"] for i in range(4)) == [2, 2, 3, 3]


def test_mask_volume_mismatch(tmp_path):
    write_ma_layout(tmp_path, 1)
    save_nifti(f"{tmp_path}/Infection_Mask/coronacases_000.nii.gz", np.zeros((16, 12, 5), np.uint8), LPS)
    ds = VolumeSliceDataset(find_cases(str(tmp_path)))
    with pytest.raises(DataError, match=r"Infection_Mask/coronacases_000\.nii\.gz: mask shape"):
        ds[0]


def test_unreadable_volume(tmp_path):
    write_ma_layout(tmp_path, 1)
    with open(f"{tmp_path}/Infection_Mask/coronacases_000.nii.gz", "wb") as fh:
        fh.write(b"garbage")
    with pytest.raises(DataError, match=r"cannot read volume .*coronacases_000\.nii\.gz"):
        VolumeSliceDataset(find_cases(str(tmp_path)))


def test_grey_volumes_not_in_hu(tmp_path, caplog):
    """Ma et al.'s Radiopaedia cases hold 0–255 grey values: scaled by 1/255, not windowed (with a warning)."""
    hu, mask = phantom()
    grey = np.clip(hu + 1000, 0, 255).astype(np.uint8)
    save_nifti(f"{tmp_path}/COVID-19-CT-Seg_20cases/radiopaedia_1.nii.gz", grey, np.eye(4))
    save_nifti(f"{tmp_path}/Infection_Mask/radiopaedia_1.nii.gz", mask, np.eye(4))
    cases = find_cases(str(tmp_path))
    with caplog.at_level("WARNING"):
        it = VolumeSliceDataset(cases)[3]
    assert "not HU" in caplog.text
    assert np.allclose(it["image"][0].numpy(), axial_slice(grey[::1, ::1, :].astype(np.float32), 3) / 255)
    windowed = VolumeSliceDataset(cases, intensity="hu")[3]["image"]
    assert windowed.max() <= 1 and not torch.allclose(windowed, it["image"])
    with pytest.raises(ValueError, match="intensity"):
        VolumeSliceDataset(cases, intensity="raw")


def test_window_hu():
    hu = np.array([-2000, -1250, -500, 250, 1000], np.float32)
    assert np.allclose(window_hu(hu), [0, 0, 0.5, 1, 1])
    assert torch.allclose(window_hu(torch.from_numpy(hu), (-1000, 0)), torch.tensor([0, 0, 0.5, 1, 1]))
    with pytest.raises(ValueError, match="high > low"):
        window_hu(hu, (100, -100))


@pytest.mark.data
def test_real_volume_reading_and_window(shared_data):
    path = os.path.join(shared_data, "ct", "lung_pet_ct_dx_A0001", "Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz")
    hu, aff = load_canonical(path)
    assert hu.shape == (512, 512, 64) and np.all(np.diag(aff)[:3] > 0)
    assert hu.min() >= -1100 and np.percentile(hu, 50) < 0  # HU scale (air ≈ −1000)
    sl = window_hu(axial_slice(hu, 32))
    assert sl.shape == (512, 512) and 0 <= sl.min() and sl.max() <= 1
    assert 0.05 < (sl < 0.3).mean() < 0.9  # lungs and air outside the body are dark in the lung window
    # radiological rows run anterior → posterior: the body (HU > -300) spans the middle rows
    body_rows = np.flatnonzero((axial_slice(hu, 32) > -300).mean(axis=1) > 0.2)
    assert body_rows.size > 100
    # sform-only file (totalseg crop) reads too
    hu2, aff2 = load_canonical(os.path.join(shared_data, "ct", "totalseg_ct_cropped", "ct_cropped.nii.gz"))
    assert hu2.ndim == 3 and np.all(np.diag(aff2)[:3] > 0)


# ---------------------------------------------------------------- splits
def test_split_reproducible_and_saved(tmp_path):
    ids = [f"case{i:02d}" for i in range(20)]
    a = make_split(ids, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=7)
    b = make_split(ids, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=7)
    c = make_split(ids, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=8)
    assert a == b and a != c
    assert [len(a["parts"][k]) for k in ("train", "val", "test")] == [14, 2, 4]
    assert sorted(sum(a["parts"].values(), [])) == ids  # a partition
    path = str(tmp_path / "split.json")
    s1 = make_split(ids, {"train": 0.5, "test": 0.5}, seed=1, path=path)
    assert json.load(open(path))["parts"] == s1["parts"]
    s2 = make_split(ids, {"train": 0.9, "test": 0.1}, seed=99, path=path)  # loaded, not re-made
    assert s2 == s1 == load_split(path)
    with pytest.raises(ValueError, match="other cases"):
        make_split(ids[:-1], {"train": 1.0}, path=path)


def test_split_no_patient_leakage():
    ids = [f"p{p}_scan{s}" for p in range(7) for s in range(3)]
    groups = {c: c.split("_")[0] for c in ids}
    split = make_split(ids, {"train": 0.6, "test": 0.4}, seed=3, groups=groups)
    train_p = {groups[c] for c in split["parts"]["train"]}
    test_p = {groups[c] for c in split["parts"]["test"]}
    assert train_p and test_p and not train_p & test_p
    kf = make_split(ids, k_folds=3, seed=0, groups=groups)
    for f in range(3):
        parts = fold_parts(kf, f)
        assert not {groups[c] for c in parts["train"]} & {groups[c] for c in parts["val"]}
        assert sorted(parts["train"] + parts["val"]) == sorted(ids)


def test_volume_dataset_from_split_has_no_slice_leakage(tmp_path):
    write_ma_layout(tmp_path, 4)
    cases = find_cases(str(tmp_path))
    split = make_split([c.case_id for c in cases], {"train": 0.5, "test": 0.5}, seed=0)
    train = VolumeSliceDataset(cases, split["parts"]["train"])
    test = VolumeSliceDataset(cases, split["parts"]["test"])
    assert len(train) == len(test) == 12
    assert not {train[i]["case"] for i in range(len(train))} & {test[i]["case"] for i in range(len(test))}
    with pytest.raises(DataError, match="unknown case ids"):
        VolumeSliceDataset(cases, ["nope"])


def test_split_errors():
    with pytest.raises(ValueError, match="exactly one"):
        make_split(["a", "b"])
    with pytest.raises(ValueError, match="sum to 1"):
        make_split(["a", "b"], {"train": 0.5})
    with pytest.raises(ValueError, match="k_folds"):
        make_split(["a", "b"], k_folds=3)
    with pytest.raises(ValueError, match="duplicate"):
        make_split(["a", "a"], {"train": 1.0})


@pytest.mark.parametrize("bad,shown", [(0.5, "0.5"), (-1.0, "-1")])
def test_mask_values_must_be_integer_labels(tmp_path, bad, shown):
    write_ma_layout(tmp_path, n=1)
    hu, mask = phantom()
    soft = mask.astype(np.float32)
    soft[0, 0, 0] = bad
    save_nifti(f"{tmp_path}/Infection_Mask/coronacases_000.nii.gz", soft, LPS)
    with pytest.raises(DataError, match=rf"Infection_Mask/coronacases_000\.nii\.gz: mask values must be "
                                        rf"non-negative integer labels; found {shown} \(1 voxels\)"):
        VolumeSliceDataset(find_cases(str(tmp_path)))
