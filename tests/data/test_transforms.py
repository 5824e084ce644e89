"""Transforms: resize modes, flips/rotations consistent across keys, determinism, multi-scale, collate."""
import pytest
import torch
import torch.nn.functional as F

from covseg_fast.data import (Compose, RandomFlip, RandomRotate90, RandomRotation, Resize, collate_slices,
                              infnet_resize, msa_unet_resize, multiscale_sizes, rescale_batch)


def _item(h=20, w=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(1, h, w, generator=g) > 0.6).float()
    return {"image": torch.rand(1, h, w, generator=g), "mask": mask, "labels": mask[0].long() * 2,
            "edge": (torch.rand(1, h, w, generator=g) > 0.9).float(), "id": "x", "orig_size": (h, w)}


def test_resize_nearest_keeps_masks_binary():
    out = Resize((32, 24))(_item())
    assert out["image"].shape == (1, 32, 24) and out["mask"].shape == (1, 32, 24) and out["labels"].shape == (32, 24)
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert set(out["labels"].unique().tolist()) <= {0, 2} and out["labels"].dtype == torch.int64
    assert out["orig_size"] == (20, 28) and out["id"] == "x"


def test_resize_bilinear_for_soft_masks():
    it = _item()
    out = Resize(40, mask_mode="bilinear", antialias=False)(it)
    ref = F.interpolate(it["mask"][None], size=(40, 40), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out["mask"], ref)
    assert len(out["mask"].unique()) > 2
    with pytest.raises(ValueError, match="mask_mode"):
        Resize(8, mask_mode="cubic")


@pytest.mark.parametrize("t", [RandomFlip(1.0, 1.0), RandomRotate90(), RandomRotation(40, p=1.0)])
def test_spatial_transforms_move_all_keys_together(t):
    it = _item()
    it["image"] = it["mask"].clone()  # image == mask, so any misalignment shows
    out = t(it, torch.Generator().manual_seed(5))
    assert torch.equal((out["image"] > 0.5).float(), out["mask"]) or isinstance(t, RandomRotation)
    if isinstance(t, RandomRotation):
        # bilinear image vs nearest mask: agree except near borders of the shape
        agree = ((out["image"] > 0.5).float() == out["mask"]).float().mean()
        assert agree > 0.9
    assert torch.equal(out["labels"], out["mask"][0].long() * 2)


def test_flip_is_exact():
    it = _item()
    out = RandomFlip(1.0, 0.0)(it, torch.Generator().manual_seed(0))
    assert torch.equal(out["image"], it["image"].flip(-1)) and torch.equal(out["labels"], it["labels"].flip(-1))


def test_rotation_zero_degrees_is_identity():
    it = _item()
    assert torch.equal(RandomRotation(0.0, p=1.0)(it)["image"], it["image"])
    with pytest.raises(ValueError, match="degrees"):
        RandomRotation(-1)


def test_determinism_under_seed():
    t = Compose([RandomFlip(0.5, 0.5), RandomRotate90(), RandomRotation(25, p=0.7)])
    results = []
    for _ in range(2):
        g = torch.Generator().manual_seed(1234)
        results.append([t(_item(seed=s), g)["image"] for s in range(6)])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    g = torch.Generator().manual_seed(99)
    other = [t(_item(seed=s), g)["image"] for s in range(6)]
    assert any(not torch.equal(a, b) for a, b in zip(results[0], other))


def test_multiscale_sizes_match_infnet():
    assert multiscale_sizes(352) == [256, 352, 448]
    assert multiscale_sizes(256) == [192, 256, 320]


def test_rescale_batch_align_corners_true():
    batch = collate_slices([Resize(352)(_item(seed=s)) for s in range(2)])
    small = rescale_batch(batch, 256)
    assert small["image"].shape == (2, 1, 256, 256) and small["labels"].shape == (2, 256, 256)
    ref = F.interpolate(batch["mask"], size=(256, 256), mode="bilinear", align_corners=True)
    assert torch.equal(small["mask"], ref)  # soft at borders, not re-binarised
    assert len(small["mask"].unique()) > 2
    assert small["id"] == batch["id"]
    assert rescale_batch(batch, 352)["image"] is batch["image"]  # rate 1: unchanged
    assert batch["image"].shape[-1] == 352  # the input is not modified


def test_collate_errors():
    with pytest.raises(ValueError, match="empty"):
        collate_slices([])
    a, b = _item(), _item()
    del b["edge"]
    with pytest.raises(ValueError, match="different keys"):
        collate_slices([a, b])


def test_model_presets():
    it = _item()
    inf = infnet_resize()(it)
    assert inf["image"].shape == (1, 352, 352) and len(inf["mask"].unique()) > 2  # soft borders
    msa = msa_unet_resize()(it)
    assert msa["mask"].shape == (1, 256, 256) and set(msa["mask"].unique().tolist()) <= {0.0, 1.0}
