"""Build covseg_fast/assets/demo_checkpoint.pt: train the demo MSA-UNet with `covseg train`, then pack best.pt.

Runs exactly ``COMMAND`` (the one the README quotes), keeps best.pt's weights and configuration, drops the
training state (optimiser, RNG: the asset should stay small) and adds ``provenance``: the command, the
commit and date it was trained at, the epoch and validation scores of best.pt, the data and its licence.
Run from the repository root with ../shared beside it: ``python tools/make_demo_checkpoint.py [dest]``.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys

import torch

from covseg_fast.experiments.crossval import code_commit
from covseg_fast.models.registry import load_model, read_checkpoint, save_checkpoint

RUN_DIR = "/tmp/demo_run"
COMMAND = ("covseg train --model msa_unet --config base=8 --data ../shared/data/covid-semiseg/train "
           f"--val-fraction 0.1 --out {RUN_DIR} --epochs 25 --seed 0 --workers 0 --device cpu")
DST = "covseg_fast/assets/demo_checkpoint.pt"
DATA = "COVID-SemiSeg 50 labelled training slices (Fan et al., Inf-Net, TMI 2020), non-commercial use only"
LICENCE = "weights for non-commercial research use only (data licence); not a medical device"


def main(dst: str = DST) -> None:
    if os.path.exists(RUN_DIR):
        sys.exit(f"{RUN_DIR} exists: remove it first (the demo is trained from scratch, not resumed)")
    commit = code_commit()  # before training: the code that trains is the code checked out now
    subprocess.run(shlex.split(COMMAND), check=True)
    best = read_checkpoint(os.path.join(RUN_DIR, "best.pt"))
    state = best["train"]
    epoch = state["best_epoch"]
    row = next(r for r in state["history"] if r.get("epoch") == epoch)
    provenance = {"command": COMMAND, "commit": commit,
                  "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "torch": torch.__version__, "data": DATA, "epoch": epoch,
                  "validation": {k: v for k, v in row.items() if k.startswith("val_")},
                  "best_val_dice_at_0.5": row.get("val_dice"), "licence": LICENCE}
    model = load_model(os.path.join(RUN_DIR, "best.pt"))
    save_checkpoint(dst, model, {"provenance": provenance})
    print(json.dumps(provenance, indent=1))
    print(f"wrote {dst} ({os.path.getsize(dst) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
