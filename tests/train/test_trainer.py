"""Trainer: learns a toy task, multi-scale stepping, AMP/channels_last paths, validation scores,
checkpoints, semi-supervised two-stage training, clear errors."""
import json
import os

import numpy as np
import pytest
import torch

from covseg_fast.models import load_model
from covseg_fast.train import Trainer, train_semi_supervised
from covseg_fast.train.validate import dice_iou, infection_probability

from ._tiny import NAME, BlobDataset, tiny_overrides


def _fit(tmp_path, **over):
    t = Trainer(NAME, {"width": 6}, "refnet", tiny_overrides(**over), BlobDataset(8), BlobDataset(4, seed=5, flip=False),
                str(tmp_path), device="cpu", progress=False)
    return t, t.fit()


def test_learns_toy_task_and_writes_checkpoints(tmp_path):
    t, summary = _fit(tmp_path, epochs=12, lr=2e-2, scales=[1.0], lr_schedule="constant")
    losses = [h["loss"] for h in t.history]
    assert losses[-1] < 0.6 * losses[0]
    assert summary["score"] == "val_dice" and summary["epochs"] == 12
    assert summary["best_score"] == max(h["val_dice"] for h in t.history) > 0.7
    assert t.global_step == 12 * 4
    hist = json.load(open(tmp_path / "history.json"))
    assert [h["epoch"] for h in hist] == list(range(1, 13))
    best = load_model(str(tmp_path / "best.pt"))
    best_epoch = summary["best_epoch"]
    assert hist[best_epoch - 1]["best"] is True
    # the best checkpoint reproduces its recorded validation Dice
    t.model.load_state_dict(best.state_dict())
    assert t.validate()["dice"] == pytest.approx(summary["best_score"], abs=1e-6)


def test_multiscale_is_one_step_per_rate(tmp_path):
    t, _ = _fit(tmp_path, epochs=1)          # refnet preset: 3 rates, 8 images, batch 2
    assert t.global_step == 4 * 3
    assert t.history[0]["images"] == 8


def test_value_clipping_bounds_the_update(tmp_path):
    # SGD lr 1 with value clip 1e-3: no parameter moves by more than 1e-3 per step
    t = Trainer(NAME, {"width": 4}, "msa_unet", tiny_overrides(epochs=1, optimizer="sgd", lr=1.0, clip=1e-3,
                                                               weight_decay=0.0, batch_size=8),
                BlobDataset(8), None, str(tmp_path), device="cpu", progress=False)
    before = {k: v.clone() for k, v in t.model.named_parameters()}
    t.fit()
    assert t.global_step == 1
    for k, v in t.model.named_parameters():
        assert (v.detach() - before[k]).abs().max() <= 1e-3 + 1e-7, k


@pytest.mark.parametrize("amp,channels_last", [(True, False), (False, True)])
def test_amp_and_channels_last_on_cpu(tmp_path, amp, channels_last):
    t, summary = _fit(tmp_path, epochs=1, amp=amp, channels_last=channels_last)
    assert np.isfinite(t.history[0]["loss"]) and 0 <= summary["best_score"] <= 1
    if channels_last:
        assert t.model.body[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.compile
def test_torch_compile_trains(tmp_path):
    t, _ = _fit(tmp_path, epochs=1, compile=True, scales=[1.0])
    assert np.isfinite(t.history[0]["loss"])
    assert not any(k.startswith("_orig_mod") for k in torch.load(tmp_path / "last.pt", weights_only=True)["state_dict"])


def test_validation_reports_every_metric_as_covseg_evaluate_would(tmp_path):
    from covseg_fast.metrics import MetricAccumulator
    from covseg_fast.train.validate import VAL_KEYS

    t, _ = _fit(tmp_path, epochs=2, lr=2e-2, scales=[1.0], lr_schedule="constant")
    assert all(f"val_{k}" in h for h in t.history for k in VAL_KEYS)
    val = t.validate()
    # the same images scored one by one with the evaluation accumulator (Inf-Net protocol)
    acc = MetricAccumulator("infnet")
    t.model.eval()
    with torch.no_grad():
        for i in range(len(t.val_dataset)):
            item = t.val_dataset[i]
            acc.update(t.model(t._inputs(item["image"][None]))[0], item["mask"][0] >= 0.5)
    table = acc.summary()["table"]
    binary = acc.summary()["threshold_0.5"]["per_image_mean"]
    expect = {"infnet_dice": table["Dice"], "sen": table["Sen"], "spec": table["Spec"], "e_phi": table["E_phi_mean"],
              "s_alpha": table["S_alpha"], "mae": table["MAE"], "precision": binary["precision"],
              "recall": binary["recall"], "specificity": binary["specificity"], "miou": binary["miou"]}
    for k, v in expect.items():
        assert val[k] == pytest.approx(v, abs=1e-6), k
    assert 0 <= val["mae"] <= 1 and 0 < val["s_alpha"] <= 1


def test_val_metric_picks_the_best_checkpoint(tmp_path):
    t, summary = _fit(tmp_path, epochs=4, lr=2e-2, scales=[1.0], lr_schedule="constant", val_metric="mae")
    maes = [h["val_mae"] for h in t.history]
    assert summary["score"] == "-val_mae" and summary["best_score"] == -min(maes)
    assert summary["best_epoch"] == 1 + maes.index(min(maes))
    with pytest.raises(ValueError, match="val_metric must be one of"):
        _fit(tmp_path, val_metric="f1")


def test_dice_iou_values():
    prob = torch.zeros(3, 4, 4)
    mask = torch.zeros(3, 1, 4, 4)
    prob[0, :2] = 0.9          # 8 predicted
    mask[0, 0, :1] = 1         # 4 true, all inside the prediction
    prob[1, 0, 0] = 0.6        # predicted 1, reference empty
    dice, iou = dice_iou(prob, mask, 0.5)   # image 2: both empty → 1
    assert torch.allclose(dice, torch.tensor([8 / 12, 0.0, 1.0]))
    assert torch.allclose(iou, torch.tensor([4 / 8, 0.0, 1.0]))
    two = torch.tensor([[[[0.0]], [[1.0]], [[1.0]]]])           # (1, 3, 1, 1): bg vs 2 infection classes
    assert infection_probability(two).item() == pytest.approx(1 - 1 / (1 + 2 * np.e))
    with pytest.raises(ValueError, match="differ"):
        dice_iou(torch.zeros(1, 4, 4), torch.zeros(1, 5, 4))


def test_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown model"):
        Trainer("no_such_model", {}, "refnet", {}, BlobDataset(2), None, str(tmp_path), device="cpu")
    t = Trainer(NAME, {}, "msa_unet", tiny_overrides(epochs=1), BlobDataset(4, size=36), None, str(tmp_path),
                device="cpu", progress=False)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        t.fit()
    with pytest.raises(ValueError, match="no validation dataset"):
        t.validate()


def test_semi_supervised_two_stages(tmp_path):
    pseudo, labelled = BlobDataset(6, seed=11), BlobDataset(4, seed=12)
    out = train_semi_supervised(NAME, pseudo, labelled, str(tmp_path), model_config={"width": 4},
                                preset="msa_unet", overrides=tiny_overrides(epochs=1),
                                pseudo_overrides={"epochs": 2, "lr": 5e-3}, val_dataset=BlobDataset(2, seed=13),
                                device="cpu", progress=False)
    assert out["pseudo"]["epochs"] == 2 and out["finetune"]["epochs"] == 1
    stage1 = torch.load(tmp_path / "pseudo" / "last.pt", weights_only=True)
    assert stage1["train"]["config"]["lr"] == 5e-3
    stage2 = torch.load(tmp_path / "finetune" / "last.pt", weights_only=True)
    assert stage2["train"]["config"]["lr"] == 1e-3 and stage2["train"]["epoch"] == 1
    # stage 2 starts from stage 1's weights: a Trainer initialised from them holds exactly those
    t = Trainer(NAME, {"width": 4}, "msa_unet", tiny_overrides(), labelled, None, str(tmp_path / "x"),
                device="cpu", init_from=str(tmp_path / "pseudo" / "last.pt"))
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, stage1["state_dict"][k]), k


@pytest.mark.data
def test_trains_on_real_slices(tmp_path, shared_data):
    from PIL import Image
    from torch.utils.data import Dataset

    root = os.path.join(shared_data, "covid-semiseg", "train")
    ids = sorted(os.listdir(os.path.join(root, "Imgs")))[:4]

    class FewSlices(Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            stem = os.path.splitext(ids[i])[0]
            img = Image.open(os.path.join(root, "Imgs", ids[i])).convert("L").resize((32, 32), Image.BILINEAR)
            gt = Image.open(os.path.join(root, "GT", stem + ".png")).convert("L").resize((32, 32), Image.NEAREST)
            image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)[None]
            mask = torch.from_numpy((np.asarray(gt) > 127).astype(np.float32))[None]
            return {"image": image, "mask": mask, "labels": mask[0].long(), "id": stem}

    t = Trainer(NAME, {"width": 4}, "msa_unet", tiny_overrides(epochs=2), FewSlices(), FewSlices(),
                str(tmp_path), device="cpu", progress=False)
    summary = t.fit()
    assert summary["epochs"] == 2 and 0 <= summary["best_score"] <= 1
    assert all(np.isfinite(h["loss"]) for h in t.history)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_channels_last_and_resume(tmp_path):
    over = dict(epochs=2, amp=None, channels_last=None)        # defaults on CUDA: bf16 autocast, channels_last
    t = Trainer(NAME, {"width": 8}, "refnet", tiny_overrides(**over), BlobDataset(8), BlobDataset(4, flip=False),
                str(tmp_path / "a"), device="cuda", progress=False)
    assert t.amp and t.channels_last
    t.fit()
    assert all(np.isfinite(h["loss"]) for h in t.history)
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert "cuda" in ckpt["train"]["rng"] and ckpt["state_dict"]["body.0.weight"].device.type == "cpu"
    r = Trainer(NAME, {"width": 8}, "refnet", tiny_overrides(epochs=3, amp=None, channels_last=None),
                BlobDataset(8), BlobDataset(4, flip=False), str(tmp_path / "a"), device="cuda", progress=False)
    r.resume(str(tmp_path / "a" / "last.pt")).fit()
    assert r.epoch == 3 and len(r.history) == 3


def test_an_epoch_without_a_bar_logs_how_far_it_is(tmp_path, monkeypatch, caplog):
    """A long epoch (the 1600-slice pseudo-label stage ran 22 min) without a progress bar still reports."""
    import logging

    from covseg_fast.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PROGRESS_NOTE_S", 0.0)  # every batch is "long enough"
    caplog.set_level(logging.INFO, logger="covseg_fast.train.trainer")
    _fit(tmp_path, epochs=1, batch_size=2, scales=[1.0])
    notes = [r.getMessage() for r in caplog.records if "batches, loss" in r.getMessage()]
    assert notes and notes[0].startswith("epoch 1/1: 1/4 batches, loss ")
    assert all("min left in this epoch" in n for n in notes) and len(notes) == 3  # not after the last batch
