"""`covseg evaluate` end to end on a few real slices with a tiny registered model, and the
Evaluator on synthetic data (numbers checked against the metrics computed directly)."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from covseg_fast.cli.main import main
from covseg_fast.data import SliceDataset
from covseg_fast.evaluate import Evaluator
from covseg_fast.metrics import MetricAccumulator
from covseg_fast.models import MODELS, ModelSpec, get_model, register_model, save_checkpoint


class TinySeg(nn.Module):
    """Bright pixels → infection: a fixed 3×3 conv (eval: logits; train: {"out": logits})."""

    def __init__(self, gain: float = 8.0, num_classes: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(1, num_classes, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(gain / 9)
            self.conv.bias.fill_(-gain * 0.5)

    def forward(self, x):
        y = self.conv(x)
        return {"out": y} if self.training else y


@pytest.fixture(autouse=True)
def tiny_registered():
    """Register the test-only model for one test, then remove it (other tests iterate MODELS)."""
    spec = register_model(ModelSpec(name="_test_tiny_seg", builder=TinySeg, criterion=lambda **kw: None,
                                    in_channels=1, input_size=(64, 64), normalization="unit",
                                    description="test-only tiny model"))
    yield spec
    MODELS.pop("_test_tiny_seg", None)


@pytest.fixture()
def checkpoint(tmp_path):
    path = str(tmp_path / "tiny.pt")
    save_checkpoint(path, get_model("_test_tiny_seg", gain=8.0))
    return path


@pytest.fixture()
def real_subset(shared_data, tmp_path):
    """A folder of symlinks to 3 real training slices (data is never copied)."""
    src = os.path.join(shared_data, "covid-semiseg", "train")
    root = tmp_path / "data"
    for sub, ext in (("Imgs", "jpg"), ("GT", "png")):
        (root / sub).mkdir(parents=True)
        for stem in ("0", "23", "67"):
            os.symlink(os.path.join(src, sub, f"{stem}.{ext}"), root / sub / f"{stem}.{ext}")
    return str(root)


@pytest.mark.data
@pytest.mark.parametrize("protocol", ["infnet", "threshold"])
def test_cli_end_to_end_on_real_slices(checkpoint, real_subset, tmp_path, protocol):
    out = str(tmp_path / f"out_{protocol}")
    rc = main(["evaluate", "--checkpoint", checkpoint, "--data", real_subset, "--out", out,
               "--protocol", protocol, "--batch-size", "2"])
    assert rc == 0
    names = sorted(os.listdir(out))
    assert names == ["curves.json", "fmeasure_curve.png", "per_image.csv", "pr_curve.png", "summary.json",
                     "summary.md"]  # and no temporary files left behind
    rows = list(csv.DictReader(open(os.path.join(out, "per_image.csv"))))
    assert [r["id"] for r in rows] == ["0", "23", "67"]
    assert {int(r["height"]) for r in rows} != {64}  # scored at the GT size, not the model size
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["protocol"] == protocol and summary["n_images"] == 3 and summary["checkpoint"] == checkpoint
    for key in ("Dice", "Sen", "Spec", "S_alpha", "E_phi_mean", "MAE"):
        assert 0 <= summary["table"][key] <= 1
    assert summary["table"]["Dice"] == pytest.approx(np.mean([float(r["mean_dice"]) for r in rows]), abs=1e-5)
    assert set(summary["threshold_0.5"]) == {"per_image_mean", "dataset_global"}
    md = open(os.path.join(out, "summary.md")).read()
    assert "| Dice | Sen | Spec | S_α | E_φ^mean | MAE |" in md and "dataset-global" in md
    curves = json.load(open(os.path.join(out, "curves.json")))
    assert len(curves["precision"]) == 256
    for png in ("pr_curve.png", "fmeasure_curve.png"):
        with Image.open(os.path.join(out, png)) as im:
            assert im.format == "PNG" and im.size[0] > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 2  # something was drawn


def _synthetic(tmp_path, n=3):
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 40 + 7 * i, 50 - 3 * i
        gt = np.zeros((h, w), np.uint8)
        gt[10:25, 12:30 - i] = 255
        img = np.clip(gt * 0.7 + rng.integers(0, 80, (h, w)), 0, 255).astype(np.uint8)
        for sub, arr in (("Imgs", img), ("GT", gt)):
            os.makedirs(tmp_path / sub, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / sub / f"{i}.png")
    return SliceDataset(str(tmp_path))


def test_evaluator_matches_direct_metrics(tmp_path):
    ds = _synthetic(tmp_path / "d")
    model = get_model("_test_tiny_seg", gain=8.0)
    summary = Evaluator(model, batch_size=2, protocol="infnet").run(ds, str(tmp_path / "out"))
    # recompute by hand: resize to 64, run, score each at its GT size
    acc = MetricAccumulator("infnet")
    model.eval()
    with torch.no_grad():
        for i in range(len(ds)):
            it = ds[i]
            x = torch.nn.functional.interpolate(it["image"][None], size=(64, 64), mode="bilinear",
                                                align_corners=False, antialias=True)
            acc.update(model(x), it["mask"][0], it["id"])
    assert summary["table"] == pytest.approx(acc.summary()["table"])
    assert summary["table"]["Dice"] > 0.5  # the tiny model does find the bright square


def test_cli_errors(checkpoint, tmp_path, caplog):
    ds_root = str(tmp_path / "d")
    _synthetic(tmp_path / "d")
    out = str(tmp_path / "out")
    # a checkpoint that is missing (or not given) is a usage error, exit 2, as in screen, export and bench
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", ds_root, "--out", out]) == 2
    assert "checkpoint not found" in caplog.text
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", ds_root, "--out", out])
    assert exc.value.code == 2
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", str(tmp_path / "nodata"), "--out", out]) == 1
    assert "image folder not found" in caplog.text
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", ds_root, "--out", out, "--batch-size", "0"]) == 2
    if not torch.cuda.is_available():
        assert main(["evaluate", "--checkpoint", checkpoint, "--data", ds_root, "--out", out, "--device", "cuda"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", checkpoint, "--data", ds_root, "--out", out, "--protocol", "best"])
    assert exc.value.code == 2
    assert not os.path.exists(out)


def test_evaluator_multiclass_logits(tmp_path):
    ds = _synthetic(tmp_path / "d", n=2)
    model = get_model("_test_tiny_seg", gain=8.0, num_classes=3)
    summary = Evaluator(model, protocol="threshold").run(ds, str(tmp_path / "out"))
    assert summary["n_images"] == 2 and 0 <= summary["table"]["Dice"] <= 1


def test_cli_on_volumes_scores_one_split_part(checkpoint, tmp_path, caplog):
    from covseg_fast.data import find_cases, make_split

    from .volume_folders import write_ma_layout

    root = str(tmp_path / "vol")
    write_ma_layout(root, n=3)
    split = str(tmp_path / "split.json")
    ids = [c.case_id for c in find_cases(root)]
    parts = make_split(ids, {"train": 2 / 3, "val": 1 / 3}, seed=0, path=split)["parts"]
    out = str(tmp_path / "out")
    assert main(["evaluate", "--checkpoint", checkpoint, "--volumes", root, "--split", split, "--out", out]) == 0
    with open(os.path.join(out, "per_image.csv")) as fh:
        rows = list(csv.DictReader(fh))
    # every axial slice (6 per phantom) of the one validation volume, scored at its own 16×12 size
    assert [r["id"] for r in rows] == [f"{parts['val'][0]}:{k:04d}" for k in range(6)]
    assert {(r["height"], r["width"]) for r in rows} == {("12", "16")}
    # per volume: the slices' 0.5-threshold counts summed into one 3-D confusion matrix; the phantom's
    # reference infection is 2 slices × 4×3 voxels of 0.8×0.8×2.5 mm³
    with open(os.path.join(out, "per_volume.csv")) as fh:
        (vrow,) = list(csv.DictReader(fh))
    tp, fp, fn = (sum(int(r[f"{k}@0.5"]) for r in rows) for k in ("tp", "fp", "fn"))
    assert vrow["case"] == parts["val"][0] and vrow["slices"] == "6"
    assert float(vrow["ref_ml"]) == pytest.approx(24 * 0.8 * 0.8 * 2.5 / 1000)
    assert float(vrow["pred_ml"]) == pytest.approx((tp + fp) * 0.8 * 0.8 * 2.5 / 1000)
    assert float(vrow["dice_3d"]) == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0, abs=1e-6)
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["per_volume"]["n_volumes"] == 1 and summary["per_volume"]["slices"] == "all"
    assert summary["per_volume"]["volume_pearson_r"] is None          # needs ≥ 3 volumes
    assert "Per volume (1 volumes, 3-D counts at threshold 0.5 over every axial slice)" in open(
        os.path.join(out, "summary.md")).read()
    assert main(["evaluate", "--checkpoint", checkpoint, "--volumes", root, "--split", split, "--part", "test",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "has no part 'test'" in caplog.text
