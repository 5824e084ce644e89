"""`covseg train`: end to end on a tiny registered model and a test-local slice reader, resume,
semi-supervised stages, exit codes and messages."""
import json
import logging
import os
import re
import sys

import pytest
import torch

from covseg_fast.cli.main import main

from ..slice_folders import write_slice_folder
from ._tiny import NAME


def _folder(root, n, seed):
    return write_slice_folder(root, n, seed)


@pytest.fixture
def folders(tmp_path):
    return _folder(tmp_path / "train", 6, 0), _folder(tmp_path / "pseudo", 4, 1), tmp_path


BASE = ["train", "--model", NAME, "--preset", "msa_unet", "--batch-size", "2", "--set", "input_size=32",
        "--device", "cpu", "--no-progress", "--workers", "0"]


def test_train_then_resume(folders, capsys):
    data, _, tmp = folders
    out = str(tmp / "run")
    assert main(BASE + ["--data", data, "--val-fraction", "0.34", "--out", out, "--epochs", "2",
                        "--config", "width=3", "--seed", "5", "--augment", "flip", "--mask-resize", "bilinear"]) == 0
    printed = capsys.readouterr().out
    assert "2 epochs; best.pt: epoch " in printed and "(best val_dice " in printed
    assert os.path.join(out, "best.pt") in printed
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["config"] == {"width": 3} and ckpt["train"]["epoch"] == 2
    assert ckpt["train"]["config"]["seed"] == 5 and ckpt["train"]["config"]["optimizer"] == "rmsprop"
    assert (ckpt["train"]["config"]["augment"], ckpt["train"]["config"]["mask_resize"]) == ("flip", "bilinear")
    # resume: model, config and settings come from the checkpoint; only --epochs changes
    assert main(["train", "--data", data, "--val-fraction", "0.34", "--out", out, "--resume",
                 os.path.join(out, "last.pt"), "--epochs", "3", "--device", "cpu", "--no-progress"]) == 0
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["train"]["epoch"] == 3 and len(ckpt["train"]["history"]) == 3
    assert ckpt["train"]["config"]["input_size"] == 32 and ckpt["train"]["config"]["seed"] == 5
    # without --val-fraction the run's saved OUT/split.json keeps the same validation slices
    assert main(["train", "--data", data, "--out", out, "--resume", os.path.join(out, "last.pt"), "--epochs", "4",
                 "--device", "cpu", "--no-progress"]) == 0
    history = torch.load(os.path.join(out, "last.pt"), weights_only=True)["train"]["history"]
    assert len(history) == 4 and "val_dice" in history[-1]


def test_pseudo_then_finetune(folders, capsys):
    data, pseudo, tmp = folders
    out = str(tmp / "semi")
    assert main(BASE + ["--data", data, "--pseudo-data", pseudo, "--pseudo-epochs", "2", "--epochs", "1",
                        "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "pseudo-label stage: 2 epochs" in printed and "fine-tune stage: 1 epochs" in printed
    # no validation data: best.pt is the epoch of lowest training loss, said in words
    assert re.search(r"fine-tune stage: 1 epochs; best\.pt: epoch 1 \(lowest training loss \d+\.\d{4}\)", printed)
    assert os.path.isfile(os.path.join(out, "pseudo", "last.pt"))
    assert os.path.isfile(os.path.join(out, "finetune", "best.pt"))


def test_usage_errors(folders, caplog):
    data, _, tmp = folders
    out = str(tmp / "x")
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--model", "no_such", "--data", data, "--out", out]) == 2
        assert "unknown model 'no_such'" in caplog.text
        assert main(BASE + ["--data", str(tmp / "missing"), "--out", out]) == 2
        assert "no such folder" in caplog.text
        assert main(BASE + ["--data", data, "--out", out, "--config", "width"]) == 2
        assert "--config expects key=value" in caplog.text
        assert main(BASE + ["--data", data, "--out", out, "--config", "bogus=1"]) == 2
        assert "--config" in caplog.text and "unexpected keyword argument 'bogus'" in caplog.text
        assert main(["train", "--model", "refnet", "--config", f"pretrained_backbone={tmp / 'r2n.pth'}",
                     "--data", data, "--out", out, "--device", "cpu", "--no-progress"]) == 2
        assert "backbone weights not found" in caplog.text and "--config pretrained_backbone=" in caplog.text
        assert main(BASE + ["--data", data, "--out", out, "--set", "bogus=1"]) == 2
        assert "unknown training setting 'bogus'" in caplog.text
        assert main(BASE + ["--data", data, "--out", out, "--resume", str(tmp / "nope.pt")]) == 1
        assert "checkpoint not found" in caplog.text
    with pytest.raises(SystemExit) as exc:
        main(BASE + ["--data", data, "--out", out, "--val-data", data, "--val-fraction", "0.2"])
    assert exc.value.code == 2


def test_missing_data_module_is_reported(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "covseg_fast.data.slices", None)   # import fails as if absent
    data = _folder(tmp_path / "d", 2, 0)
    with caplog.at_level(logging.ERROR):
        assert main(BASE + ["--data", data, "--out", str(tmp_path / "o")]) == 1
    assert "covseg_fast.data.slices.SliceDataset" in caplog.text and "lacks" in caplog.text


@pytest.mark.parametrize("model,extra", [
    ("msa_unet", ["--config", "base=8", "--set", "input_size=64"]),
    ("unet", ["--config", "base=8", "--set", "input_size=64"]),
    # the preset's three scales (48, 64, 80 at 64) and its bilinear GT/edge resize, with Edge/ supervision
    ("refnet", ["--set", "input_size=64"]),
])
def test_one_epoch_of_each_real_model(tmp_path, capsys, model, extra):
    data = write_slice_folder(tmp_path / "d", 4, shape=(48, 48), edges=model == "refnet")
    out = str(tmp_path / model)
    assert main(["train", "--model", model, "--data", data, "--val-fraction", "0.25", "--out", out,
                 "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--no-progress", "--workers", "0"]
                + extra) == 0
    assert "1 epochs; best.pt: epoch " in capsys.readouterr().out
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["model"] == model and ckpt["train"]["epoch"] == 1
    history = ckpt["train"]["history"]
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0].values()
                                     if isinstance(v, float))


def test_train_on_volumes_splits_by_volume_and_reuses_the_split(tmp_path, caplog):
    from covseg_fast.data import load_split

    from ..volume_folders import write_ma_layout

    write_ma_layout(tmp_path / "vol", n=4)
    out = str(tmp_path / "run")
    args = ["train", "--model", NAME, "--preset", "msa_unet", "--batch-size", "2", "--set", "input_size=32",
            "--device", "cpu", "--no-progress", "--volumes", str(tmp_path / "vol"), "--val-fraction", "0.25",
            "--out", out, "--epochs", "1", "--drop-empty", "--window", "-1000", "200"]
    assert main(args) == 0
    split = load_split(os.path.join(out, "split.json"))
    train, val = split["parts"]["train"], split["parts"]["val"]
    assert len(train) == 3 and len(val) == 1 and not set(train) & set(val)     # whole volumes, never slices
    # the window is recorded with the model; evaluate applies it unless told otherwise
    recorded = torch.load(os.path.join(out, "best.pt"), weights_only=True)["input"]
    assert recorded == {"source": "volumes", "window": [-1000.0, 200.0], "drop_empty": True}
    with caplog.at_level(logging.INFO):
        assert main(["evaluate", "--checkpoint", os.path.join(out, "best.pt"), "--volumes", str(tmp_path / "vol"),
                     "--split", os.path.join(out, "split.json"), "--out", str(tmp_path / "ev")]) == 0
    assert "HU window -1000 … 200 (recorded in the checkpoint)" in caplog.text
    # the saved split is reused (a new seed would otherwise move volumes): the same parts after a second run
    assert main(args + ["--seed", "7"]) == 0
    assert load_split(os.path.join(out, "split.json"))["parts"] == split["parts"]
    with caplog.at_level(logging.ERROR):
        assert main(args + ["--multiclass"]) == 2
        assert "--multiclass trains on class-index maps" in caplog.text


def test_slice_split_is_saved_and_can_be_given_back(folders):
    from covseg_fast.data import load_split

    data, _, tmp = folders
    out = str(tmp / "run")
    assert main(BASE + ["--data", data, "--val-fraction", "0.34", "--out", out, "--epochs", "1"]) == 0
    parts = load_split(os.path.join(out, "split.json"))["parts"]
    assert sorted(parts["train"] + parts["val"], key=int) == [str(i) for i in range(6)] and len(parts["val"]) == 2
    # --split FILE fixes the validation slices exactly
    fixed = str(tmp / "fixed.json")
    with open(fixed, "w") as fh:
        json.dump({"format": 1, "seed": 0, "kind": "fractions", "parts": {"train": ["0", "1", "2", "3"],
                                                                        "val": ["5"]}}, fh)
    out2 = str(tmp / "run2")
    assert main(BASE + ["--data", data, "--split", fixed, "--out", out2, "--epochs", "1"]) == 0
    assert main(BASE + ["--data", data, "--split", fixed, "--val-fraction", "0.2", "--out", out2]) == 2


def test_multiclass_maps_train_a_three_class_model(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    data = write_slice_folder(tmp_path / "d", 4, shape=(48, 48))
    os.makedirs(os.path.join(data, "GT-multiclass"))
    for i in range(4):
        gt = np.array(Image.open(os.path.join(data, "GT", f"{i}.png"))) > 0
        classes = gt.astype(np.uint8)
        classes[:, 24:] *= 2                     # the right half of each lesion is "consolidation"
        Image.fromarray(classes).save(os.path.join(data, "GT-multiclass", f"{i}.png"))
    out = str(tmp_path / "mc")
    common = ["train", "--model", "msa_unet", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "2",
              "--set", "input_size=32", "--device", "cpu", "--no-progress"]
    assert main(common + ["--config", "base=8", "num_classes=3", "--multiclass"]) == 0
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["config"]["num_classes"] == 3
    with caplog.at_level(logging.ERROR):
        assert main(common + ["--config", "base=8", "num_classes=3"]) == 2
        assert "needs class-index maps: add --multiclass" in caplog.text


def test_slice_training_records_the_window_its_images_show(folders):
    """--window with --data is not applied to the (already windowed) images; it is recorded for screening."""
    data, pseudo, tmp = folders
    plain, windowed, semi = str(tmp / "plain"), str(tmp / "windowed"), str(tmp / "semi")
    assert main(BASE + ["--data", data, "--out", plain, "--epochs", "1"]) == 0
    assert main(BASE + ["--data", data, "--out", windowed, "--epochs", "1", "--window", "-1100", "250"]) == 0
    assert "input" not in torch.load(os.path.join(plain, "last.pt"), weights_only=True)
    assert torch.load(os.path.join(windowed, "last.pt"), weights_only=True)["input"] == {
        "source": "slices", "window": [-1100.0, 250.0]}
    # the images were not windowed again: the same seed gives exactly the same training
    losses = [json.load(open(os.path.join(d, "history.json")))[0]["loss"] for d in (plain, windowed)]
    assert losses[0] == losses[1]
    # the semi-supervised stages record it too, and pseudo_intensity=match is a training setting
    assert main(BASE + ["--data", data, "--out", semi, "--epochs", "1", "--window", "-1100", "250",
                        "--pseudo-data", pseudo, "--pseudo-epochs", "1", "--set", "pseudo_intensity=match"]) == 0
    for stage in ("pseudo", "finetune"):
        ckpt = torch.load(os.path.join(semi, stage, "last.pt"), weights_only=True)
        assert ckpt["input"] == {"source": "slices", "window": [-1100.0, 250.0]}
        assert ckpt["train"]["config"]["pseudo_intensity"] == "match"
