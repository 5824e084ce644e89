"""Training folders: the preset's GT/edge resize (MODELS.md §3.5 vs §4.4), seeded augmentation that
changes every epoch (also behind the Subset of --val-fraction) and an unaugmented validation split."""
import torch

from covseg_fast.train.batching import EpochSampler, make_loader
from covseg_fast.train.datasets import load_slice_datasets, open_slice_folder

from ..slice_folders import write_slice_folder


def test_mask_resize_nearest_stays_binary_bilinear_is_soft(tmp_path):
    root = write_slice_folder(tmp_path / "d", 2, shape=(40, 40))
    hard = open_slice_folder(root, 28)[0]["mask"]
    soft = open_slice_folder(root, 28, mask_resize="bilinear")[0]["mask"]
    assert hard.shape == soft.shape == (1, 28, 28)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    inner = (soft > 0) & (soft < 1)
    assert inner.any(), "bilinear resize must leave soft values at the lesion border (not re-binarised)"
    # soft values sit only where the binary resize changes value nearby: the lesion's border ring
    assert ((soft - hard).abs() < 1).all() and soft.sum() > 0


def test_augment_draws_new_transforms_each_epoch_and_repeats_on_resume(tmp_path):
    root = write_slice_folder(tmp_path / "d", 6, shape=(32, 32))
    train, val, _ = load_slice_datasets(root, 32, val_fraction=0.3, seed=3, augment="flip_rot90")

    def epoch_masks(epoch):
        sampler = EpochSampler(len(train), seed=3, shuffle=False)
        return torch.cat([b["mask"] for b in make_loader(train, 6, sampler, epoch)])

    e0, e1, e0_again = epoch_masks(0), epoch_masks(1), epoch_masks(0)
    assert not torch.equal(e0, e1), "the same flips/rotations were drawn in two epochs"
    assert torch.equal(e0, e0_again)
    # the held-out items are the plain slices, never augmented
    plain = open_slice_folder(root, 32)
    for k, i in enumerate(val.indices):
        assert torch.equal(val[k]["mask"], plain[i]["mask"])
