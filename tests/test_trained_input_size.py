"""Every consumer of a checkpoint feeds its model at the size it was trained at (or --input-size).

A tiny model is trained by `covseg train` at 48 px (its registered default is 64 px); `covseg
evaluate`, `covseg screen` and `covseg export` must then feed it 48×48 and say so in their reports.
"""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from covseg_fast.cli.main import main
from tests.inference import tiny_model
from tests.slice_folders import write_slice_folder

TRAINED = 48  # the tiny model's registered input size is 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained_size")
    data = write_slice_folder(root / "slices", 6, seed=0)
    out = str(root / "run")
    assert main(["train", "--model", tiny_model.NAME, "--preset", "msa_unet", "--batch-size", "2",
                 "--set", f"input_size={TRAINED}", "--epochs", "1", "--data", data, "--out", out,
                 "--device", "cpu", "--no-progress", "--workers", "0"]) == 0
    return os.path.join(out, "last.pt"), data, root


@pytest.fixture
def seen_sizes(monkeypatch):
    """The (H, W) of every batch the tiny model is called with."""
    sizes = []
    forward = tiny_model.TinyNet.forward

    def spy(self, x):
        sizes.append(tuple(x.shape[-2:]))
        return forward(self, x)

    monkeypatch.setattr(tiny_model.TinyNet, "forward", spy)
    return sizes


def test_checkpoint_records_the_training_size(trained):
    ckpt, _, _ = trained
    assert torch.load(ckpt, weights_only=True)["train"]["config"]["input_size"] == TRAINED
    assert tiny_model.SPEC.input_size != (TRAINED, TRAINED)


def test_evaluate_feeds_the_training_size(trained, seen_sizes, tmp_path):
    ckpt, data, _ = trained
    assert main(["evaluate", "--checkpoint", ckpt, "--data", data, "--out", str(tmp_path / "e")]) == 0
    summary = json.load(open(tmp_path / "e" / "summary.json"))
    assert summary["input_size"] == [TRAINED, TRAINED]
    assert summary["input_size_source"] == "training size recorded in the checkpoint"
    assert seen_sizes and set(seen_sizes) == {(TRAINED, TRAINED)}
    assert f"input {TRAINED}×{TRAINED} px" in open(tmp_path / "e" / "summary.md").read()
    seen_sizes.clear()
    assert main(["evaluate", "--checkpoint", ckpt, "--data", data, "--out", str(tmp_path / "o"),
                 "--input-size", "64"]) == 0
    summary = json.load(open(tmp_path / "o" / "summary.json"))
    assert (summary["input_size"], summary["input_size_source"]) == ([64, 64], "--input-size")
    assert set(seen_sizes) == {(64, 64)}


def _ct(path):
    hu = np.full((40, 40, 5), -900, np.int16)
    hu[15:25, 15:25] = 40
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 5.0, 1.0])), path)


def test_screen_feeds_the_training_size(trained, seen_sizes, tmp_path):
    ckpt, _, _ = trained
    _ct(str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "out"
    assert main(["screen", str(tmp_path / "ct.nii.gz"), "-o", str(out), "--checkpoint", ckpt, "--no-progress",
                 "--workers", "0"]) == 0
    record = json.load(open(out / "ct.json"))
    assert (record["input_size_px"], record["input_size_source"]) == ([TRAINED, TRAINED],
                                                                      "training size recorded in the checkpoint")
    assert seen_sizes and set(seen_sizes) == {(TRAINED, TRAINED)}
    seen_sizes.clear()
    assert main(["screen", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "o2"), "--checkpoint", ckpt,
                 "--no-progress", "--workers", "0", "--input-size", "32", "40"]) == 0
    assert json.load(open(tmp_path / "o2" / "ct.json"))["input_size_px"] == [32, 40]
    assert set(seen_sizes) == {(32, 40)}


def test_export_uses_the_training_size(trained, tmp_path):
    import onnx

    ckpt, _, _ = trained
    path = str(tmp_path / "m.onnx")
    assert main(["export", "--checkpoint", ckpt, "--out", path, "--static"]) == 0
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["covseg_input_size"]) == [TRAINED, TRAINED]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[-2:] == [TRAINED, TRAINED]


def test_bad_input_size_is_a_usage_error(trained, tmp_path, caplog):
    ckpt, data, _ = trained
    assert main(["evaluate", "--checkpoint", ckpt, "--data", data, "--out", str(tmp_path / "e"),
                 "--input-size", "0"]) == 2
    assert "--input-size 0" in caplog.text
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "m.onnx"), "--input-size", "1", "2",
                 "3"]) == 2
    assert not os.path.exists(tmp_path / "e") and not os.path.exists(tmp_path / "m.onnx")


def test_a_model_trained_on_transposed_slices_is_fed_transposed_slices(tmp_path, seen_sizes, monkeypatch):
    """input.plane = transposed (COVID-SemiSeg's layout): screen feeds the transposed radiological slices, and
    the mask still lands voxel for voxel on the input grid."""
    from covseg_fast.inference.screener import ScreenConfig, Screener
    from covseg_fast.io import read_case

    seen = []
    forward = tiny_model.TinyNet.forward
    monkeypatch.setattr(tiny_model.TinyNet, "forward", lambda self, x: (seen.append(x.clone()), forward(self, x))[1])
    hu = np.full((40, 40, 3), -900, np.int16)
    hu[5:12, 20:35, :] = 40             # an off-centre, elongated bright block: its transpose differs
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 5.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    ckpt = tiny_model.make_checkpoint(str(tmp_path / "t.pt"), input_info={"source": "slices", "plane": "transposed"})
    out = tmp_path / "out"
    assert main(["screen", str(tmp_path / "ct.nii.gz"), "-o", str(out), "--checkpoint", ckpt, "--no-progress",
                 "--workers", "0", "--batch-size", "8", "--save-unrestricted-mask"]) == 0
    assert json.load(open(out / "ct.json"))["slice_plane"] == "transposed"
    vol = read_case(str(tmp_path / "ct.nii.gz"), "nifti")
    radiological, _ = Screener(torch.nn.Identity(), tiny_model.SPEC, ScreenConfig(out_dir=str(out))).to_model_slices(
        vol.data)
    assert torch.equal(torch.cat(seen), radiological.transpose(-2, -1))
    # the tiny model is a per-pixel function: fed transposed or not, the mask mapped back must be the same
    plain = tiny_model.make_checkpoint(str(tmp_path / "p.pt"))
    assert main(["screen", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "plain"), "--checkpoint", plain,
                 "--no-progress", "--workers", "0", "--batch-size", "8", "--save-unrestricted-mask"]) == 0
    # (this phantom has no lungs: the model's own output is the unrestricted mask)
    mask = np.asarray(nib.load(str(out / "ct_infection_unrestricted.nii.gz")).dataobj)
    assert mask[6:11, 21:34].all() and mask.sum() > 0
    assert np.array_equal(mask, np.asarray(nib.load(str(tmp_path / "plain" /
                                                         "ct_infection_unrestricted.nii.gz")).dataobj))


def test_slice_plane_is_recorded_by_train(trained, tmp_path):
    _, data, _ = trained
    out = str(tmp_path / "run")
    assert main(["train", "--model", tiny_model.NAME, "--preset", "msa_unet", "--batch-size", "2", "--set",
                 f"input_size={TRAINED}", "--epochs", "1", "--data", data, "--out", out, "--device", "cpu",
                 "--no-progress", "--workers", "0", "--slice-plane", "transposed"]) == 0
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["input"] == {"source": "slices",
                                                                                   "plane": "transposed"}
