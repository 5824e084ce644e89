"""SliceDataset: the real COVID-SemiSeg folders and clear errors for bad data."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from covseg_fast.data import DataError, SliceDataset, collate_slices, Resize

TRAIN_IDS = [str(i) for i in [*range(0, 6), *range(10, 18), 19, 20, *range(23, 36), 37, *range(39, 48),
                              *range(49, 59), 67]]


@pytest.fixture(scope="module")
def semiseg(shared_data):
    return os.path.join(shared_data, "covid-semiseg")


@pytest.mark.data
def test_real_train_folder(semiseg):
    ds = SliceDataset(os.path.join(semiseg, "train"), edges="Edge", multiclass="GT-multiclass")
    assert len(ds) == 50
    assert ds.ids == TRAIN_IDS  # natural order, ids as in the README
    fractions = []
    for i in (0, 17, 49):
        it = ds[i]
        h, w = it["orig_size"]
        assert 150 <= w <= 460 + 10 and 160 <= h <= 510 + 10
        assert it["image"].shape == (1, h, w) and it["image"].dtype == torch.float32
        assert 0 <= it["image"].min() and it["image"].max() <= 1
        assert set(it["mask"].unique().tolist()) <= {0.0, 1.0}
        assert set(it["edge"].unique().tolist()) <= {0.0, 1.0}
        assert it["labels"].dtype == torch.int64 and set(it["labels"].unique().tolist()) <= {0, 1, 2}
        # README: the union of the multiclass labels equals GT
        assert torch.equal(it["labels"] > 0, it["mask"][0] > 0.5)
        fractions.append(it["mask"].mean().item())
    assert all(0.009 <= f <= 0.387 for f in fractions)


@pytest.mark.data
def test_real_binary_labels_and_collate(semiseg):
    ds = SliceDataset(os.path.join(semiseg, "train"), ids=["0", "23", "67"], transform=Resize(64))
    batch = collate_slices([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 64, 64) and batch["labels"].shape == (3, 64, 64)
    assert batch["id"] == ["0", "23", "67"] and batch["orig_size"].shape == (3, 2)
    assert torch.equal(batch["labels"], (batch["mask"][:, 0] > 0.5).long())
    with pytest.raises(ValueError, match="Resize"):
        collate_slices([SliceDataset(os.path.join(semiseg, "train"))[i] for i in range(2)])


@pytest.mark.data
def test_real_pseudo_labels_are_soft(semiseg):
    ds = SliceDataset(os.path.join(semiseg, "pseudo"), soft_masks=True)
    assert len(ds) == 1600
    it = ds[0]
    values = it["mask"].unique()
    assert len(values) > 2 and values.min() >= 0 and values.max() <= 1  # soft, not binarised
    assert torch.equal(it["labels"], (it["mask"][0] > 0.5).long())
    with pytest.raises(DataError, match=r"Data-1_coronacases_org_001_1\.png.*outside the expected binary set"):
        SliceDataset(os.path.join(semiseg, "pseudo"), ids=["Data-1_coronacases_org_001_1"])[0]


# ---------------------------------------------------------------- synthetic folders and bad data
def _write(path, arr, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _folder(tmp_path, n=3, size=(12, 10)):
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(str(tmp_path / "Imgs" / f"{i}.png"), rng.integers(0, 256, size, dtype=np.uint8))
        _write(str(tmp_path / "GT" / f"{i}.png"), (rng.random(size) > 0.7).astype(np.uint8) * 255)
    return tmp_path


def test_rgb_image_becomes_grey_and_01_masks(tmp_path):
    _write(str(tmp_path / "Imgs" / "a.png"), np.full((5, 6, 3), 200, np.uint8))
    _write(str(tmp_path / "GT" / "a.png"), np.eye(5, 6, dtype=np.uint8))
    it = SliceDataset(str(tmp_path))[0]
    assert it["image"].shape == (1, 5, 6) and torch.allclose(it["image"], torch.full((1, 5, 6), 200 / 255))
    assert torch.equal(it["mask"][0], torch.eye(5, 6))


def test_empty_folder(tmp_path):
    (tmp_path / "Imgs").mkdir()
    (tmp_path / "GT").mkdir()
    with pytest.raises(DataError, match=r"Imgs holds no file"):
        SliceDataset(str(tmp_path))


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"image folder not found: .*Imgs"):
        SliceDataset(str(tmp_path))


def test_image_without_mask(tmp_path):
    _folder(tmp_path)
    os.remove(tmp_path / "GT" / "1.png")
    with pytest.raises(DataError, match=r"Imgs/1\.png has no mask file"):
        SliceDataset(str(tmp_path))


def test_unreadable_image(tmp_path):
    _folder(tmp_path)
    (tmp_path / "Imgs" / "2.png").write_bytes(b"not a png at all")
    ds = SliceDataset(str(tmp_path))
    with pytest.raises(DataError, match=r"cannot read image .*Imgs/2\.png"):
        ds[2]
    with pytest.raises(DataError, match=r"2\.png"):
        ds.check()


def test_size_mismatch(tmp_path):
    _folder(tmp_path)
    _write(str(tmp_path / "GT" / "0.png"), np.zeros((11, 10), np.uint8))
    with pytest.raises(DataError, match=r"GT/0\.png: size 10×11 differs from its image .*Imgs/0\.png \(10×12\)"):
        SliceDataset(str(tmp_path))[0]


def test_mask_values_outside_set(tmp_path):
    _folder(tmp_path)
    _write(str(tmp_path / "GT" / "1.png"), np.full((12, 10), 128, np.uint8))
    with pytest.raises(DataError, match=r"GT/1\.png: values \[128\] outside the expected binary set"):
        SliceDataset(str(tmp_path))[1]
    assert SliceDataset(str(tmp_path), soft_masks=True)[1]["mask"].max().item() == pytest.approx(128 / 255)


def test_multiclass_values_outside_set(tmp_path):
    _folder(tmp_path, n=1)
    _write(str(tmp_path / "MC" / "0.png"), np.full((12, 10), 5, np.uint8))
    with pytest.raises(DataError, match=r"MC/0\.png: values \[5\] outside the expected set 0\.\.2"):
        SliceDataset(str(tmp_path), masks=None, multiclass="MC")[0]


def test_mask_without_image_is_ignored_with_warning(tmp_path, caplog):
    _folder(tmp_path, n=2)
    _write(str(tmp_path / "GT" / "99.png"), np.zeros((12, 10), np.uint8))
    with caplog.at_level("WARNING"):
        ds = SliceDataset(str(tmp_path))
    assert len(ds) == 2 and "without image" in caplog.text


def test_seeded_transform_is_reproducible(tmp_path):
    from covseg_fast.data import Compose, RandomFlip, RandomRotation
    _folder(tmp_path, n=3)
    t = Compose([RandomFlip(0.5, 0.5), RandomRotation(30, p=1.0)])
    a = SliceDataset(str(tmp_path), transform=t, seed=3)
    b = SliceDataset(str(tmp_path), transform=t, seed=3)
    for i in (2, 0, 1):  # order does not matter
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["labels"], b[i]["labels"])
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(3))


def test_seeded_transform_same_with_dataloader_workers(tmp_path):
    from covseg_fast.data import Compose, RandomFlip, RandomRotate90
    _folder(tmp_path, n=4)
    ds = SliceDataset(str(tmp_path), transform=Compose([RandomFlip(0.5, 0.5), RandomRotate90()]), seed=11)
    runs = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=collate_slices)
        runs.append([b["image"] for b in loader])
    assert len(runs[0]) == 4 and all(torch.equal(a, b) for a, b in zip(*runs))
