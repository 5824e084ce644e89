"""`covseg crossval`: pooled out-of-fold scores, the study end to end on a tiny model, resume,
recorded failures, usage errors."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import covseg_fast.experiments.crossval as crossval_module
from covseg_fast.cli.main import main
from covseg_fast.experiments import seed_scores
from covseg_fast.metrics import MetricAccumulator

from ..slice_folders import write_slice_folder
from ..train._tiny import NAME


def _folder(root, n, seed=0):
    return write_slice_folder(root, n, seed, shape=(40, 36))


def test_pooled_rows_equal_one_accumulator_over_all_images():
    # why pooling per-image rows across folds is the Inf-Net table over all out-of-fold maps
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(1, 1, 24, 20, generator=gen) * 3, torch.rand(30, 26, generator=gen) > 0.7) for _ in range(7)]
    whole, fold_a, fold_b = MetricAccumulator(), MetricAccumulator(), MetricAccumulator()
    for i, (logits, gt) in enumerate(pairs):
        whole.update(logits, gt, str(i))
        (fold_a if i < 3 else fold_b).update(logits, gt, str(i))
    pooled = seed_scores(fold_a.rows + fold_b.rows)
    summary = whole.summary()
    for col in ("Dice", "Sen", "Spec", "S_alpha", "E_phi_mean", "MAE"):
        assert pooled[col] == pytest.approx(summary["table"][col], abs=1e-6), col
    for col, key in (("IoU@0.5", "iou"), ("P@0.5", "precision"), ("R@0.5", "recall"), ("Dice@0.5", "dice")):
        assert pooled[col] == pytest.approx(summary["threshold_0.5"]["per_image_mean"][key], abs=1e-9), col


BASE = ["crossval", "--models", NAME, "--preset", "msa_unet", "--folds", "3", "--seeds", "0", "1", "--epochs", "1",
        "--set", "input_size=32", "batch_size=2", "--device", "cpu"]


def test_study_end_to_end_then_resume(tmp_path):
    data, out = _folder(tmp_path / "data", 7), str(tmp_path / "study")
    table = str(tmp_path / "docs" / "results.md")
    assert main(BASE + ["--data", data, "--out", out, "--config", f"{NAME}:width=3", "--table", table]) == 0
    report = json.load(open(os.path.join(out, "results.json")))
    arm = report["arms"][0]
    assert arm["n_complete_seeds"] == 2 and arm["failures"] == [] and arm["model_config"] == {"width": 3}
    for seed_entry in arm["seeds"]:
        split = json.load(open(os.path.join(out, "splits", f"seed{seed_entry['seed']}.json")))
        held_out = [i for part in split["parts"].values() for i in part]
        assert sorted(held_out) == sorted(str(i) for i in range(7))   # every slice predicted once per seed
        assert seed_entry["n_images"] == 7 and seed_entry["folds"] == [0, 1, 2]
        rows = []
        for fold in range(3):
            r = json.load(open(os.path.join(out, "runs", NAME, f"seed{seed_entry['seed']}", f"fold{fold}", "result.json")))
            assert sorted(r["val_ids"]) == sorted(split["parts"][f"fold{fold}"])
            assert not set(r["train_ids"]) & set(r["val_ids"])
            assert r["epochs"] == 1 and r["train_seconds"] >= 0
            rows += r["rows"]
        assert seed_entry["scores"]["Dice"] == pytest.approx(np.mean([row["mean_dice"] for row in rows]))
    dice = [s["scores"]["Dice"] for s in arm["seeds"]]
    assert arm["summary"]["Dice"]["mean"] == pytest.approx(np.mean(dice))
    assert arm["summary"]["Dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
    text = open(table).read()
    assert text == open(os.path.join(out, "results.md")).read()
    assert f"| {NAME} | 2 | {np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f} |" in text
    assert "epochs 1 (paper preset: 70)" in text and "Ref-Net (Med Phys 2022) | 0.755" in text
    assert "Model configuration changed" in text and "{'width': 3}" in text
    assert report["trained_at"] == [json.load(open(os.path.join(out, "runs", NAME, "seed0", "fold0",
                                                              "result.json")))["commit"]]

    # a second run trains nothing (finished folds are skipped); --report-only rebuilds the same numbers
    mtime = os.path.getmtime(os.path.join(out, "runs", NAME, "seed0", "fold0", "last.pt"))
    assert main(BASE + ["--data", data, "--out", out, "--config", f"{NAME}:width=3"]) == 0
    assert os.path.getmtime(os.path.join(out, "runs", NAME, "seed0", "fold0", "last.pt")) == mtime
    assert main(BASE + ["--data", data, "--out", out, "--report-only"]) == 0
    again = json.load(open(os.path.join(out, "results.json")))
    assert again["arms"][0]["summary"] == arm["summary"]
    assert again["command"] == report["command"]   # the training command, not the rebuild
    # --report-only without the study's options still describes the folds as they were trained
    assert main(["crossval", "--models", NAME, "--preset", "msa_unet", "--data", data, "--out", out,
                 "--report-only"]) == 0
    bare = json.load(open(os.path.join(out, "results.json")))
    assert bare["folds"] == 3 and bare["seeds"] == [0, 1] and len(bare["arms"]) == 1
    assert bare["arms"][0]["model_config"] == {"width": 3} and bare["arms"][0]["summary"] == arm["summary"]
    assert again["trained_by"] == [report["command"]] and f"Command: `{report['command']}`" in text


def test_a_study_run_in_several_calls_names_every_training_command(tmp_path, monkeypatch):
    data, out = _folder(tmp_path / "data", 6), str(tmp_path / "study")
    for call in (["--only-folds", "0"], ["--only-folds", "1", "2"]):
        argv = BASE + ["--data", data, "--out", out, "--seeds", "0"] + call
        monkeypatch.setattr(sys, "argv", ["covseg", *argv])   # command_line() reads the process's arguments
        assert main(argv) == 0
    report = json.load(open(os.path.join(out, "results.json")))
    assert report["arms"][0]["n_complete_seeds"] == 1
    assert len(report["trained_by"]) == 2 and all("--only-folds" in c for c in report["trained_by"])
    text = open(os.path.join(out, "results.md")).read()
    assert "Commands (the models were trained by 2 calls):" in text
    assert all(f"- `{c}`" in text for c in report["trained_by"])


def test_pseudo_label_stage_is_trained_once_per_seed_and_every_fold_fine_tunes_from_it(tmp_path, monkeypatch):
    from covseg_fast.train import Trainer

    data, pseudo = _folder(tmp_path / "data", 6), _folder(tmp_path / "pseudo", 5, seed=9)
    out = str(tmp_path / "study")
    starts = []
    real_init = Trainer.__init__

    def recording_init(self, *args, **kwargs):
        starts.append((kwargs["out_dir"], kwargs.get("init_from")))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", recording_init)
    argv = BASE + ["--data", data, "--out", out, "--seeds", "0", "--pseudo-data", pseudo, "--pseudo-epochs", "2"]
    assert main(argv) == 0
    stage = os.path.join(out, "runs", NAME, "seed0", "pseudo")
    done = json.load(open(os.path.join(stage, "done.json")))
    assert done["epochs"] == 2 and done["images"] == 5
    assert [d for d, _ in starts] == [stage] + [os.path.join(out, "runs", NAME, "seed0", f"fold{f}") for f in range(3)]
    assert [i for _, i in starts] == [None] + [done["checkpoint"]] * 3     # every fold starts from stage 1
    report = json.load(open(os.path.join(out, "results.json")))
    seed = report["arms"][0]["seeds"][0]
    assert seed["pseudo_seconds"] == done["seconds"]
    text = open(os.path.join(out, "results.md")).read()
    assert "shared by the folds" in text and "(2 epochs)" in text and "**Pseudo-labels.**" in text
    starts.clear()
    assert main(argv) == 0 and starts == []        # finished: neither the stage nor a fold trains again


def test_settings_that_differ_from_the_finished_folds_are_refused(tmp_path, caplog):
    data, out = _folder(tmp_path / "data", 6), str(tmp_path / "study")
    first = BASE + ["--data", data, "--out", out, "--seeds", "0", "--only-folds", "0"]
    assert main(first + ["--config", f"{NAME}:width=3"]) == 0
    assert main(first + ["--config", f"{NAME}:width=4", "--only-folds", "1"]) == 2
    assert "trained with other settings (model_config {'width': 3} there, {'width': 4} now)" in caplog.text
    assert not os.path.exists(os.path.join(out, "runs", NAME, "seed0", "fold1"))   # nothing trained
    assert main(BASE + ["--data", data, "--out", out, "--seeds", "0", "--folds", "2", "--config", f"{NAME}:width=3"]) == 2
    assert "not --folds 2" in caplog.text


@pytest.fixture()
def second_model():
    """A second registered tiny model for one test (other tests iterate MODELS)."""
    from covseg_fast.models import MODELS, ModelSpec, register_model

    from ..train._tiny import TinySeg, tiny_criterion

    register_model(ModelSpec(name="tiny_seg_test_b", builder=TinySeg, criterion=tiny_criterion, in_channels=1,
                             input_size=(32, 32), normalization="unit", size_multiple=8, description="second"))
    yield "tiny_seg_test_b"
    MODELS.pop("tiny_seg_test_b", None)


def test_one_process_per_model_gives_one_table_of_every_model(tmp_path, monkeypatch, second_model):
    data, out = _folder(tmp_path / "data", 6), str(tmp_path / "study")
    common = ["crossval", "--preset", "msa_unet", "--folds", "2", "--seeds", "0", "--set", "input_size=32",
              "batch_size=2", "--device", "cpu", "--data", data, "--out", out]
    calls = [["--models", NAME, "--epochs", "1", "--config", f"{NAME}:width=3"],
             ["--models", second_model, "--epochs", "2"]]
    for call in calls:
        monkeypatch.setattr(sys, "argv", ["covseg", *common, *call])
        assert main(common + call) == 0
    report = json.load(open(os.path.join(out, "results.json")))     # written by the second call
    by_label = {a["label"]: a for a in report["arms"]}
    assert list(by_label) == [second_model, NAME]                     # this call's arm first, then the other
    assert by_label[NAME]["model_config"] == {"width": 3} and by_label[NAME]["epochs"] == 1
    assert by_label[second_model]["epochs"] == 2 and all(a["n_complete_seeds"] == 1 for a in report["arms"])
    assert len(report["trained_by"]) == 2


def test_failed_fold_is_recorded_the_study_goes_on_and_a_rerun_retries_it(tmp_path, monkeypatch):
    data, out = _folder(tmp_path / "data", 6), str(tmp_path / "study")
    real = crossval_module.Evaluator
    calls = {"n": 0}

    class FlakyEvaluator(real):
        def run(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated out of memory")
            return super().run(*args, **kwargs)

    monkeypatch.setattr(crossval_module, "Evaluator", FlakyEvaluator)
    assert main(BASE + ["--data", data, "--out", out, "--seeds", "0"]) == 1
    report = json.load(open(os.path.join(out, "results.json")))
    arm = report["arms"][0]
    assert arm["failures"] == [{"seed": 0, "fold": 1, "error": "RuntimeError: simulated out of memory"}]
    assert arm["n_complete_seeds"] == 0 and arm["seeds"][0]["folds"] == [0, 2]
    assert "fold 1 **failed**: RuntimeError: simulated out of memory" in open(os.path.join(out, "results.md")).read()
    assert main(BASE + ["--data", data, "--out", out, "--seeds", "0"]) == 0   # retried, now succeeds
    arm = json.load(open(os.path.join(out, "results.json")))["arms"][0]
    assert arm["failures"] == [] and arm["n_complete_seeds"] == 1
    assert calls["n"] == 4   # only the failed fold was scored again


@pytest.mark.parametrize("extra, message", [
    (["--models", "no_such_model"], "no_such_model"),
    (["--config", "refnet:x=1"], "'refnet' is not one of --models"),
    (["--config", "width=3"], "expects MODEL:KEY=VALUE"),
    (["--folds", "9"], "folds must be in 2..6"),
    (["--only-folds", "3"], "--only-folds [3] outside 0..2"),
    (["--set", "no_such_setting=1"], "unknown training setting 'no_such_setting'"),
    (["--preset", "fast"], "unknown preset 'fast'"),
])
def test_usage_errors_name_the_problem(tmp_path, caplog, extra, message):
    data = _folder(tmp_path / "data", 6)
    assert main(BASE + ["--data", data, "--out", str(tmp_path / "o")] + extra) == 2
    assert message in caplog.text
    assert not os.path.exists(tmp_path / "o" / "runs")


def test_missing_data_folder(tmp_path, caplog):
    assert main(BASE + ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in caplog.text


def test_volume_study_splits_volumes_and_scores_every_slice_of_the_held_out_ones(tmp_path):
    from ..volume_folders import write_ma_layout

    write_ma_layout(tmp_path / "vol", n=4)          # 4 volumes of 6 axial slices, infection on slices 2 and 3
    out = str(tmp_path / "study")
    base = ["crossval", "--models", NAME, "--preset", "msa_unet", "--folds", "2", "--seeds", "0", "--epochs", "1",
            "--set", "input_size=32", "batch_size=2", "--device", "cpu", "--volumes", str(tmp_path / "vol"),
            "--window", "-1000", "200", "--out", out]
    assert main(base) == 0
    split = json.load(open(os.path.join(out, "splits", "seed0.json")))
    volumes = sorted(f"coronacases_{i:03d}" for i in range(4))
    assert sorted(c for part in split["parts"].values() for c in part) == volumes   # whole volumes in the folds
    for fold in range(2):
        r = json.load(open(os.path.join(out, "runs", NAME, "seed0", f"fold{fold}", "result.json")))
        assert sorted(r["val_ids"]) == sorted(split["parts"][f"fold{fold}"]) and not set(r["train_ids"]) & set(r["val_ids"])
        scored = {row["id"].split(":")[0] for row in r["rows"]}
        assert scored == set(r["val_ids"]) and len(r["rows"]) == 6 * len(r["val_ids"])   # every slice of them
    report = json.load(open(os.path.join(out, "results.json")))
    assert report["unit"] == "volume" and report["n_cases"] == 4 and report["window"] == [-1000.0, 200.0]
    fold0 = torch.load(os.path.join(out, "runs", NAME, "seed0", "fold0", "last.pt"), weights_only=True)
    assert fold0["input"]["window"] == [-1000.0, 200.0]      # evaluate/screen of a fold model use it
    assert report["arms"][0]["seeds"][0]["n_images"] == 24
    text = open(os.path.join(out, "results.md")).read()
    assert "2-fold cross-validation on 4 labelled CT volumes (4 patients)" in text
    assert "split by patient" in text and "HU window -1000 … 200" in text
    # the per-volume column: 3-D Dice of each held-out volume from its slices' summed counts, averaged
    rows = [row for f in range(2) for row in json.load(open(os.path.join(out, "runs", NAME, "seed0", f"fold{f}",
                                                                         "result.json")))["rows"]]
    dice3d = []
    for case in volumes:
        tp, fp, fn = (sum(r[f"{k}@0.5"] for r in rows if r["id"].startswith(case + ":")) for k in ("tp", "fp", "fn"))
        dice3d.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    assert report["arms"][0]["seeds"][0]["scores"]["Dice3D@0.5"] == pytest.approx(np.mean(dice3d))
    assert "3-D Dice@0.5 (per volume)" in text

    # --drop-empty: only the infected slices train and are scored
    assert main(base[:-1] + [out + "_infected", "--drop-empty"]) == 0
    report = json.load(open(os.path.join(out + "_infected", "results.json")))
    assert report["arms"][0]["seeds"][0]["n_images"] == 8 and report["drop_empty"] is True


@pytest.mark.parametrize("extra, message", [
    (["--folds", "5"], "folds must be in 2..4 (patients in"),
    (["--window", "200", "-1000"], "window"),
    (["--pseudo-data", "."], "--pseudo-data (slices windowed as 8-bit images) applies to --data"),
])
def test_volume_study_usage_errors(tmp_path, caplog, extra, message):
    from ..volume_folders import write_ma_layout

    write_ma_layout(tmp_path / "vol", n=4)
    argv = ["crossval", "--models", NAME, "--preset", "msa_unet", "--volumes", str(tmp_path / "vol"),
            "--out", str(tmp_path / "o")] + extra
    assert main(argv) == 2
    assert message in caplog.text


def test_drop_empty_needs_volumes(tmp_path, caplog):
    assert main(BASE + ["--data", _folder(tmp_path / "data", 6), "--out", str(tmp_path / "o"), "--drop-empty"]) == 2
    assert "--drop-empty applies to --volumes" in caplog.text
