"""Repeated k-fold cross-validation of registered models on a labelled slice folder or CT volumes.

Why: the COVID-SemiSeg test images are not distributed with the training split, so a results
table on real data needs held-out predictions from the 50 labelled slices; on a labelled volume set
(e.g. Ma et al.'s 20 cases) k-fold by patient is the published protocol. Every seed gets its own
k-fold split of the cases (slices, or volumes with a patient's volumes together; seeded, saved to
``splits/seed<s>.json``); each fold trains on the other folds for the preset's full schedule and
scores its **last** checkpoint on the held-out fold (no checkpoint is chosen on the images it is
scored on). Over the k folds each slice is predicted exactly once, so one seed gives one
out-of-fold score over all slices, and the table reports mean ± std over seeds (see
:mod:`.results_table`; the sources are in :mod:`.sources`).

Layout under ``out``::

    splits/seed<s>.json                       the k-fold split of seed s
    runs/<arm>/seed<s>/pseudo/                the pseudo-label stage of a --pseudo-data arm (once per seed;
                                              done.json once finished)
    runs/<arm>/seed<s>/fold<f>/last.pt        trained weights (+ best.pt, history.json)
    runs/<arm>/seed<s>/fold<f>/eval/          covseg evaluate's reports on the held-out fold
    runs/<arm>/seed<s>/fold<f>/result.json    train time, throughput, per-image rows, or the error
    results.json, results.md                  the aggregate (rewritten after every fold)

A fold whose ``result.json`` holds a score is skipped, so an interrupted study continues where it
stopped; a fold that fails records its error there, the study goes on, and the next run tries it again.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..atomic import atomic_write
from ..data.splits import fold_parts, make_split
from ..evaluate import Evaluator
from ..models.registry import get_spec, load_model
from ..train.presets import preset_for_model, resolve_config
from .sources import SliceFolderSource, VolumeFolderSource

log = logging.getLogger(__name__)

__all__ = ["Arm", "CrossValidation"]


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of the study: a registered model with its configuration and training settings.

    ``overrides`` are TrainConfig fields on top of ``preset`` (default: the model's paper preset);
    ``pseudo_data`` trains first on that pseudo-labelled folder (``pseudo_epochs``, default the
    schedule's), then fine-tunes (Semi-Inf-Net).
    """

    label: str
    model: str
    model_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preset: Optional[str] = None
    pseudo_data: Optional[str] = None
    pseudo_epochs: Optional[int] = None

    def train_config(self, seed: int, **extra: Any):
        return resolve_config(self.preset or preset_for_model(self.model), {**self.overrides, "seed": seed, **extra})

    def pseudo_config(self, seed: int):
        return self.train_config(seed, **({"epochs": self.pseudo_epochs} if self.pseudo_epochs is not None else {}))

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model, "model_config": dict(self.model_config),
                "preset": self.preset or preset_for_model(self.model), "overrides": dict(self.overrides),
                "pseudo_data": self.pseudo_data, "pseudo_epochs": self.pseudo_epochs}


def _write_json(path: str, payload: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=1)
        fh.write("\n")


class CrossValidation:
    """Run (and resume) a repeated k-fold study.

    Args:
        data: labelled slice folder (``Imgs/``, ``GT/``, optional ``Edge/``), or a
            :class:`~.sources.VolumeFolderSource` (split by patient, slices of held-out volumes scored).
        out: study folder (see the module docstring).
        arms: the models to compare (labels unique).
        seeds: one k-fold split and one training run per fold for each seed.
        folds: k.
        only_folds: run just these folds (e.g. to spread a study over several calls); the table
            then says how many folds each seed has.
        device: torch device for training and scoring (default cuda if available, else cpu).
        protocol: "infnet" or "threshold" (see covseg_fast.metrics).
        progress: training progress bars.
        on_fold_done: called after each fold (e.g. to rewrite the table).
    """

    def __init__(self, data: str | SliceFolderSource | VolumeFolderSource, out: str, arms: Sequence[Arm],
                 seeds: Sequence[int], folds: int = 5, only_folds: Optional[Sequence[int]] = None,
                 device: Optional[str] = None, protocol: str = "infnet", progress: bool = False,
                 on_fold_done: Optional[Callable[[], None]] = None) -> None:
        if not arms:
            raise ValueError("crossval: give at least one model")
        labels = [a.label for a in arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"crossval: model labels must be unique, got {labels}")
        if not seeds:
            raise ValueError("crossval: give at least one seed")
        source = SliceFolderSource(data) if isinstance(data, str) else data
        for arm in arms:
            get_spec(arm.model)
            arm.train_config(0)  # unknown settings fail here, before hours of training
            if arm.pseudo_data is not None and not os.path.isdir(arm.pseudo_data):
                raise FileNotFoundError(f"--pseudo-data: no such folder: {arm.pseudo_data}")
            if arm.pseudo_data is not None and source.unit != "slice":
                raise ValueError("--pseudo-data (slices windowed as 8-bit images) applies to --data, not --volumes")
        self.source, self.case_ids = source, source.case_ids
        groups = len(set(source.groups.values())) if source.groups else len(self.case_ids)
        if not 2 <= folds <= groups:
            what = "patients" if source.groups else f"{source.unit}s"
            raise ValueError(f"crossval: folds must be in 2..{groups} ({what} in {source.path}), got {folds}")
        bad = [f for f in (only_folds or []) if not 0 <= f < folds]
        if bad:
            raise ValueError(f"crossval: --only-folds {bad} outside 0..{folds - 1}")
        self.out, self.arms, self.seeds, self.folds = out, list(arms), list(seeds), folds
        self.only_folds = sorted(set(only_folds)) if only_folds else list(range(folds))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.protocol, self.progress, self.on_fold_done = protocol, progress, on_fold_done

    def fold_dir(self, arm: Arm, seed: int, fold: int) -> str:
        return os.path.join(self.out, "runs", arm.label, f"seed{seed}", f"fold{fold}")

    def split(self, seed: int) -> dict:
        path = os.path.join(self.out, "splits", f"seed{seed}.json")
        split = make_split(self.case_ids, k_folds=self.folds, seed=seed, groups=self.source.groups, path=path)
        if len(split["parts"]) != self.folds:
            raise ValueError(f"{path}: the study was split into {len(split['parts'])} folds, not --folds {self.folds}")
        return split

    def collect(self) -> list[dict[str, Any]]:
        """Every fold result under OUT/runs: every arm and seed trained there, by this call or another."""
        results = []
        for path in sorted(glob.glob(os.path.join(self.out, "runs", "*", "seed*", "fold*", "result.json"))):
            with open(path) as fh:
                results.append(json.load(fh))
        return results

    def check_finished_folds(self) -> None:
        """Refuse to go on where a finished fold or pseudo-label stage of one of our arms was trained with
        other settings: skipping it would put two configurations in one row of the table.

        Raises:
            ValueError: naming the file and the settings that differ.
        """
        for arm in self.arms:
            want = json.loads(json.dumps(arm.describe()))   # as it reads back from result.json
            pattern = os.path.join(self.out, "runs", glob.escape(arm.label), "seed*", "*")
            for path in sorted(glob.glob(os.path.join(pattern, "result.json")) +
                               glob.glob(os.path.join(pattern, "done.json"))):
                with open(path) as fh:
                    got = json.load(fh)
                if "error" in got:
                    continue
                if got.get("folds", self.folds) != self.folds:
                    raise ValueError(f"{path}: trained as one of {got['folds']} folds, not --folds {self.folds}; "
                                     "use another --out")
                recorded = got.get("arm_config")
                if recorded is not None and recorded != want:
                    diff = "; ".join(f"{k} {recorded.get(k)!r} there, {want[k]!r} now" for k in want
                                     if recorded.get(k) != want[k])
                    raise ValueError(f"{path}: trained with other settings ({diff}); give the same settings, "
                                     f"another --out, or delete {os.path.dirname(os.path.dirname(path))} to retrain")

    def report_arms(self, results: Sequence[Mapping[str, Any]], include_untrained: bool = True
                    ) -> list[dict[str, Any]]:
        """The table's rows: each arm as its folds recorded it (this call's settings only for folds that
        recorded none), this call's arms first, then any other arm found on disk."""
        recorded: dict[str, dict[str, Any]] = {}
        for r in results:
            if r.get("arm_config") or r["arm"] not in recorded:
                recorded[r["arm"]] = r.get("arm_config") or {}
        arms = []
        for arm in self.arms:
            if arm.label in recorded or include_untrained:
                arms.append(recorded.pop(arm.label, None) or arm.describe())
        for label, config in recorded.items():   # trained by another call, settings unrecorded: model only
            model = next(r["model"] for r in results if r["arm"] == label)
            arms.append(config or {"label": label, "model": model, "model_config": {},
                                   "preset": preset_for_model(model), "overrides": {}, "pseudo_data": None,
                                   "pseudo_epochs": None, "settings_unrecorded": True})
        return arms

    def run(self) -> list[dict[str, Any]]:
        """Train and score every pending fold; returns every fold's result (done before or now)."""
        self.check_finished_folds()
        results = []
        for arm in self.arms:
            for seed in self.seeds:
                parts = self.split(seed)
                for fold in self.only_folds:
                    path = os.path.join(self.fold_dir(arm, seed, fold), "result.json")
                    if os.path.exists(path):
                        with open(path) as fh:
                            before = json.load(fh)
                        if "error" not in before:
                            results.append(before)
                            log.info("%s seed %d fold %d: done before, skipped", arm.label, seed, fold)
                            continue
                        log.info("%s seed %d fold %d: failed before (%s), trying again", arm.label, seed, fold,
                                 before["error"])
                    result = self.run_fold(arm, seed, fold, fold_parts(parts, fold))
                    _write_json(path, result)
                    results.append(result)
                    if self.on_fold_done is not None:
                        self.on_fold_done()
        return results

    def pseudo_stage(self, arm: Arm, seed: int) -> dict[str, Any]:
        """Stage 1 of Semi-Inf-Net, trained once per (arm, seed) and shared by the seed's folds: the
        pseudo-labelled slices are none of the labelled ones, so no fold's held-out slices are in it,
        and k trainings on the same 1600 slices would cost k times the time for the same weights.
        An interrupted stage continues from its last.pt; a finished one is read from done.json."""
        from ..train import Trainer
        from ..train.datasets import open_pseudo_folder
        from ..train.trainer import LAST

        where = os.path.join(self.out, "runs", arm.label, f"seed{seed}", "pseudo")
        done = os.path.join(where, "done.json")
        if os.path.exists(done):
            with open(done) as fh:
                return json.load(fh)
        cfg = arm.pseudo_config(seed)
        pseudo = open_pseudo_folder(arm.pseudo_data, cfg.input_size, seed, cfg.augment, cfg.pseudo_intensity,
                                    labelled=self.source.path)
        trainer = Trainer(arm.model, model_config=arm.model_config, preset=cfg, train_dataset=pseudo,
                          out_dir=where, device=self.device, progress=self.progress)
        if os.path.exists(os.path.join(where, LAST)):
            trainer.resume(os.path.join(where, LAST))
        log.info("%s seed %d: pseudo-label stage on %d slices", arm.label, seed, len(pseudo))
        t0 = time.perf_counter()
        out = trainer.fit()
        info = {"checkpoint": out["last"], "seconds": round(time.perf_counter() - t0, 2), "epochs": out["epochs"],
                "images": len(pseudo), "images_per_s": out["images_per_s"], "commit": code_commit(),
                "arm_config": arm.describe()}
        _write_json(done, info)
        return info

    def run_fold(self, arm: Arm, seed: int, fold: int, parts: Mapping[str, list[str]]) -> dict[str, Any]:
        """Train on ``parts['train']``, score the last checkpoint on ``parts['val']``; errors are recorded."""
        from ..train import Trainer

        where = self.fold_dir(arm, seed, fold)
        result: dict[str, Any] = {"arm": arm.label, "model": arm.model, "seed": seed, "fold": fold,
                                  "train_ids": list(parts["train"]), "val_ids": list(parts["val"]),
                                  "device": self.device, "commit": code_commit(), "command": command_line(),
                                  "folds": self.folds, "arm_config": arm.describe()}
        try:
            cfg = arm.train_config(seed)
            train = self.source.training_set(parts["train"], cfg, seed)
            init_from = None
            if arm.pseudo_data is not None:
                stage = self.pseudo_stage(arm, seed)
                init_from = stage["checkpoint"]
                result.update(pseudo_checkpoint=init_from, pseudo_seconds=stage["seconds"])
            t0 = time.perf_counter()
            out = Trainer(arm.model, model_config=arm.model_config, preset=cfg, train_dataset=train, out_dir=where,
                          device=self.device, progress=self.progress, init_from=init_from,
                          input_info=self.source.input_info()).fit()
            result.update(train_seconds=round(time.perf_counter() - t0, 2), epochs=out["epochs"],
                          images_per_s=out["images_per_s"], checkpoint=out["last"])
            model = load_model(out["last"], map_location="cpu")
            result["parameters"] = sum(p.numel() for p in model.parameters())
            # scored at each slice's own size (Inf-Net protocol); the model sees the training input size
            scored = self.source.scored_set(parts["val"])
            summary = Evaluator(model, device=self.device, protocol=self.protocol,
                                input_size=(cfg.input_size, cfg.input_size)).run(
                scored, os.path.join(where, "eval"), meta={"checkpoint": out["last"]})
            with open(os.path.join(where, "eval", "per_image.csv")) as fh:
                result["rows"] = _read_rows(fh.read())
            result["fold_table"] = summary["table"]
            log.info("%s seed %d fold %d: Dice %.4f on %d held-out slices, trained in %.0f s", arm.label, seed,
                     fold, summary["table"]["Dice"], summary["n_images"], result["train_seconds"])
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, and the study goes on with the next fold
            log.error("%s seed %d fold %d failed: %s", arm.label, seed, fold, exc)
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc(limit=8)
        return result


def _read_rows(text: str) -> list[dict[str, Any]]:
    """per_image.csv → rows with numbers as floats (ids stay strings)."""
    import csv
    import io

    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: (v if k == "id" else float(v)) for k, v in row.items()})
    return rows


def command_line() -> str:
    """The command that started this process, for the results file."""
    return " ".join(["covseg" if os.path.basename(sys.argv[0]) in ("covseg", "__main__.py") else sys.argv[0],
                     *sys.argv[1:]])


def code_commit() -> str:
    """Commit of the covseg_fast code that runs (+"-dirty" for uncommitted changes); COVSEG_GIT_COMMIT wins."""
    if os.environ.get("COVSEG_GIT_COMMIT"):
        return os.environ["COVSEG_GIT_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.check_output(["git", "-C", here, "rev-parse", "--short", "HEAD"], text=True,
                                         stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                        text=True, stderr=subprocess.DEVNULL).strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
