"""Build covseg_fast/assets/demo_checkpoint.pt: train the shipped MSA-UNet with `covseg train`, then pack it.

Runs exactly ``COMMAND`` (the recipe chosen by cross-validation, docs/recipe_search.md): a pseudo-label stage
on the 1600 COVID-SemiSeg pseudo-labelled slices, then 30 epochs on all 50 labelled slices. It ships the
fine-tune stage's **last** checkpoint, the one cross-validation scores (no validation split exists to pick a
"best" one). The asset keeps the weights, the model configuration, the training configuration (the input
size screening feeds) and the recorded input (window, slice plane); it drops the training state (optimiser,
RNG: the asset should stay small) and adds ``provenance``: command, commit and date, data, licence, and the
cross-validated scores of the recipe read from a ``covseg crossval`` results.json when one is given.

Run from the repository root with ../shared beside it:
``python tools/make_demo_checkpoint.py [--dest PATH] [--cv-results results.json]``.
``--record-cv RESULTS...`` records the scores in an existing asset without training (the recipe's
cross-validation may finish after the asset was trained; the weights are not touched).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys

import torch

from covseg_fast.experiments.crossval import code_commit
from covseg_fast.models.registry import load_model, read_checkpoint, save_checkpoint

RUN_DIR = "/tmp/demo_run"
COMMAND = ("covseg train --model msa_unet --config base=16 --data ../shared/data/covid-semiseg/train "
           "--pseudo-data ../shared/data/covid-semiseg/pseudo --pseudo-epochs 3 --epochs 30 "
           "--set input_size=128 channels_last=true --window -1110 260 --slice-plane transposed "
           f"--out {RUN_DIR} --seed 0 --workers 0 --device cpu --no-progress")
SHIPPED = os.path.join(RUN_DIR, "finetune", "last.pt")
DST = "covseg_fast/assets/demo_checkpoint.pt"
DATA = ("COVID-SemiSeg (Fan et al., Inf-Net, TMI 2020): 1600 pseudo-labelled slices (labels made by a model), "
        "then the 50 labelled training slices; non-commercial use only")
LICENCE = "weights for non-commercial research use only (data licence); not a medical device"
MAX_BYTES = 25_000_000


def cross_validation(path: str, label: str = "msa_unet") -> dict:
    """The recipe's cross-validated scores from a `covseg crossval` results.json or its results .md.

    The .md form (the table crossval writes, e.g. docs/results_cpu_semi.md) is read from its per-seed lines
    ("- msa_unet seed 0: Dice 0.568, S_α 0.717, MAE 0.102, ...") and its "models trained at commit" line,
    for studies whose results.json is gone; mean and sample std are computed from the seeds.
    """
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".md"):
        rows = re.findall(rf"^- {re.escape(label)} seed (\d+): Dice ([0-9.]+), S_α ([0-9.]+), MAE ([0-9.]+)",
                          text, flags=re.M)
        commit = re.search(r"models trained at commit `([0-9a-f]+)`", text)
        seeds = [int(r[0]) for r in rows]
        dice, s_alpha, mae = ([float(r[i]) for r in rows] for i in (1, 2, 3))
        command = re.findall(r"^- `(covseg crossval [^`]+)`", text, flags=re.M)
        return {"results": path, "command": command, "commit": commit.group(1) if commit else None,
                "protocol": "5-fold, pooled out-of-fold, infnet metrics", "seeds": seeds,
                "dice_per_seed": dice, "dice": _mean_std(dice), "s_alpha": _mean_std(s_alpha),
                "mae": _mean_std(mae)}
    results = json.loads(text)
    arm = next(a for a in results["arms"] if a["label"] == label)
    done = [s for s in arm["seeds"] if s.get("complete")]
    return {"results": path, "command": results["command"], "commit": results["commit"],
            "protocol": f"{results['folds']}-fold, pooled out-of-fold, {results['protocol']} metrics",
            "seeds": [s["seed"] for s in done],
            "dice_per_seed": [round(s["scores"]["Dice"], 4) for s in done],
            "dice": _mean_std([s["scores"]["Dice"] for s in done]),
            "s_alpha": _mean_std([s["scores"]["S_alpha"] for s in done]),
            "mae": _mean_std([s["scores"]["MAE"] for s in done])}


def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4) if values else None,
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def record_cv(dst: str, results: list[str]) -> None:
    """Add the recipe's cross-validated scores (one entry per study) to the provenance of the asset ``dst``."""
    payload = read_checkpoint(dst)
    payload["provenance"]["cross_validation"] = [cross_validation(path) for path in results]
    model = load_model(dst)
    extra = {k: v for k, v in payload.items() if k in ("train", "input", "provenance")}
    save_checkpoint(dst, model, extra)
    print(json.dumps(payload["provenance"]["cross_validation"], indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=DST)
    parser.add_argument("--cv-results", nargs="+", default=[],
                        help="covseg crossval results.json (or results .md) of this recipe: its scores are "
                             "recorded in the provenance")
    parser.add_argument("--record-cv", metavar="RESULTS", nargs="+",
                        help="only record these cross-validated scores in --dest's provenance, then stop")
    args = parser.parse_args(argv)
    if args.record_cv:
        record_cv(args.dest, args.record_cv)
        return
    if os.path.exists(RUN_DIR):
        sys.exit(f"{RUN_DIR} exists: remove it first (the demo is trained from scratch, not resumed)")
    commit = code_commit()  # before training: the code that trains is the code checked out now
    subprocess.run(shlex.split(COMMAND), check=True)
    payload = read_checkpoint(SHIPPED)
    state = payload["train"]
    provenance = {"command": COMMAND, "commit": commit, "checkpoint": "finetune/last.pt",
                  "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "torch": str(torch.__version__), "data": DATA, "licence": LICENCE,
                  "epochs": {"pseudo": 3, "finetune": len(state.get("history", []))},
                  "final_train_loss": (state.get("history") or [{}])[-1].get("loss")}
    if args.cv_results:
        provenance["cross_validation"] = [cross_validation(path) for path in args.cv_results]
    if not payload.get("input"):
        sys.exit(f"{SHIPPED} records no input window/plane: COMMAND must pass --window and --slice-plane")
    model = load_model(SHIPPED)
    # the training configuration (input size) and recorded input (window, plane) are what screening reads
    save_checkpoint(args.dest, model, {"train": {"config": state["config"]}, "input": payload["input"],
                                       "provenance": provenance})
    size = os.path.getsize(args.dest)
    print(json.dumps(provenance, indent=1))
    print(f"wrote {args.dest} ({size / 1e6:.1f} MB)")
    if size > MAX_BYTES:
        sys.exit(f"{args.dest} is {size / 1e6:.1f} MB, over the 25 MB limit for committed weights")


if __name__ == "__main__":
    main()
