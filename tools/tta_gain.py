"""Gain and cost of test-time flip averaging, measured out of fold on a finished `covseg crossval` study.

Every fold's last checkpoint is scored again on its own held-out slices, once per TTA mode, exactly as
the study scored it (the Inf-Net protocol at each slice's size, the model fed at its training size);
a seed pools its folds' rows as the study's table does (experiments.results_table.seed_scores), and
the table gives mean ± std over seeds, plus the seconds per scored slice of each mode (this machine,
one thread unless OMP_NUM_THREADS says otherwise).

    python tools/tta_gain.py STUDY_OUT [--arm msa_unet] [--modes none hflip flips] [--out docs/tta.md]
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from covseg_fast.data.slices import SliceDataset  # noqa: E402
from covseg_fast.evaluate import Evaluator  # noqa: E402
from covseg_fast.experiments.crossval import _read_rows  # noqa: E402
from covseg_fast.experiments.results_table import _mean_std, seed_scores  # noqa: E402
from covseg_fast.models import load_model  # noqa: E402
from covseg_fast.models.tta import with_tta  # noqa: E402

COLUMNS = ("Dice", "S_alpha", "MAE", "Dice@0.5")


def score_fold(result: dict, data: str, mode: str) -> tuple[list[dict], float]:
    """(per-image rows, seconds) of one fold's last checkpoint on its held-out slices under ``mode``."""
    model = load_model(result["checkpoint"])
    size = result["arm_config"]["overrides"].get("input_size") or None
    evaluator = Evaluator(with_tta(model, mode), protocol="infnet", input_size=(size, size) if size else None)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        evaluator.run(SliceDataset(data, ids=result["val_ids"]), out)
        seconds = time.perf_counter() - t0
        with open(os.path.join(out, "per_image.csv")) as fh:
            return _read_rows(fh.read()), seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study")
    ap.add_argument("--arm", default=None, help="arm label (default: every arm of the study)")
    ap.add_argument("--modes", nargs="+", default=["none", "hflip", "flips"])
    ap.add_argument("--out", default=None, help="Markdown report (default: print only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    paths = sorted(glob.glob(os.path.join(args.study, "runs", args.arm or "*", "seed*", "fold*", "result.json")))
    results = [json.load(open(p)) for p in paths]
    results = [r for r in results if "error" not in r]
    data = json.load(open(os.path.join(args.study, "results.json")))["data"]
    table: dict[tuple[str, str], dict] = {}
    for arm in sorted({r["arm"] for r in results}):
        for mode in args.modes:
            per_seed, seconds, images = {}, 0.0, 0
            for r in (r for r in results if r["arm"] == arm):
                rows, s = score_fold(r, data, mode)
                per_seed.setdefault(r["seed"], []).extend(rows)
                seconds, images = seconds + s, images + len(rows)
            scores = [seed_scores(rows) for rows in per_seed.values()]
            table[arm, mode] = {"seeds": len(scores), "ms_per_slice": 1000 * seconds / images,
                                **{c: _mean_std([s[c] for s in scores]) for c in COLUMNS}}
            print(arm, mode, table[arm, mode], flush=True)
    lines = [f"| arm | TTA | seeds | " + " | ".join(COLUMNS) + " | ms / slice (scoring, CPU) |",
             "|---|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for (arm, mode), t in table.items():
        cells = " | ".join(f"{t[c][0]:.4f} ± {t[c][1]:.4f}" for c in COLUMNS)
        lines.append(f"| {arm} | {mode} | {t['seeds']} | {cells} | {t['ms_per_slice']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        head = [f"# Test-time flip averaging: out-of-fold gain and cost", "",
                f"`python tools/tta_gain.py {args.study}` on {datetime.date.today()}, CPU, "
                f"{torch.get_num_threads()} thread(s). Each fold's last checkpoint re-scored on its held-out "
                "slices (Inf-Net protocol; Dice, S_α, MAE means over 256 thresholds, Dice@0.5 thresholded), seeds "
                "pooled as in the study's table; time includes reading and scoring.", ""]
        with open(args.out, "w") as fh:
            fh.write("\n".join(head + lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
