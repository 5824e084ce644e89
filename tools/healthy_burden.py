"""False-positive burden of a checkpoint on the real non-COVID chest CTs of ../shared/data/ct/.

None of these volumes has COVID-19 (a lung-cancer staging scan, a COPDGene chest, a TotalSegmentator chest
crop, and the demo volume made from the first), so every infected millilitre `covseg screen` reports in
them is a false positive. The volumes are screened as a user would (`covseg screen`, the checkpoint's
window and input size, infection counted inside the lung mask) and the table gives, per volume, the lung
volume, the infected volume and the burden (infected / lung, %), plus what the screener said about the
lung mask. Goal for the shipped model: burden <= 1 % on each.

    python tools/healthy_burden.py [--checkpoint PATH] [--out docs/false_positive_burden.md]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import sys
import tempfile


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_CT = os.path.join(os.path.dirname(ROOT), "shared", "data", "ct")
DEMO = os.path.join(ROOT, "covseg_fast", "assets", "demo_ct.nii.gz")
VOLUMES = {  # file -> what it is (../shared/data/README.md)
    "lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz":
        "Lung-PET-CT-Dx A0001: lung-cancer staging CT, 512×512×64, 5 mm (a tumour, no COVID)",
    "cip_copdgene_ct64/ct-64_LPS.nii.gz": "COPDGene chest (CIP), downsampled ×1/8 to 64×64×79, ≈4.2 mm",
    "totalseg_ct_cropped/ct_cropped.nii.gz": "TotalSegmentator chest crop, 120×126×164, 1.5 mm (lungs cut)",
}
GOAL_PCT = 1.0
sys.path.insert(0, ROOT)

from covseg_fast import __version__  # noqa: E402
from covseg_fast.experiments.crossval import code_commit  # noqa: E402


def screen(checkpoint: str, inputs: list[str], out: str, threshold: float) -> list[dict]:
    """Rows of summary.csv of `covseg screen` run on ``inputs`` (CPU) at probability ``threshold``."""
    command = [sys.executable, "-m", "covseg_fast", "screen", *inputs, "--out", out, "--checkpoint",
               checkpoint, "--device", "cpu", "--no-progress", "--threshold", str(threshold)]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    with open(os.path.join(out, "summary.csv"), encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text: str, digits: int) -> str:
    return f"{float(text):,.{digits}f}" if text else "–"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.path.join(ROOT, "covseg_fast", "assets",
                                                             "demo_checkpoint.pt"))
    parser.add_argument("--out", help="markdown file to write (default: print)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5],
                        help="probability thresholds to screen at (the first is the main table's)")
    args = parser.parse_args(argv)
    found = {os.path.join(SHARED_CT, name): what for name, what in VOLUMES.items()
             if os.path.exists(os.path.join(SHARED_CT, name))}
    if not found:
        sys.exit(f"no volume of {sorted(VOLUMES)} under {SHARED_CT}: put ../shared beside the checkout")
    found[DEMO] = "demo_ct.nii.gz (packaged): A0001 downsampled to 128×128×64"
    with tempfile.TemporaryDirectory() as tmp:  # screen's outputs are read, then thrown away
        runs = {t: screen(args.checkpoint, list(found), os.path.join(tmp, f"out{t}"), t)
                for t in args.thresholds}
    rows = runs[args.thresholds[0]]
    what = {os.path.basename(p): w for p, w in found.items()}
    model = rows[0]["model"] if rows else "?"
    lines = ["# False-positive burden of the shipped model on non-COVID chest CT", "",
             f"`python tools/healthy_burden.py` on {datetime.date.today().isoformat()}: `covseg screen` of "
             f"`{os.path.relpath(args.checkpoint, ROOT)}` ({model}) on CPU, window "
             f"{rows[0]['window_hu'].replace(';', ' …') if rows else '?'} HU, threshold {args.thresholds[0]:g}, "
             "infection counted inside the lung mask. None of "
             "these volumes has COVID-19, so every infected millilitre is a false positive. "
             f"Goal: burden ≤ {GOAL_PCT:g} % on each. Research tool, not a medical device.", "",
             "| volume | what | status | lung mL | infected mL | burden % | excluded outside lung mL | "
             "warnings |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = os.path.basename(r["path"])
        lines.append(f"| {name} | {what.get(name, '')} | {r['status']} | {_num(r['lung_ml'], 0)} | "
                     f"{_num(r['infected_ml'], 1)} | {_num(r['burden_pct'], 2)} | "
                     f"{_num(r['excluded_outside_lung_ml'], 1)} | {r['warnings'] or '–'} |")
    over = [r for r in rows if r["burden_pct"] and float(r["burden_pct"]) > GOAL_PCT]
    lines += ["", f"{len(rows) - len(over)} of {len(rows)} volumes within the goal"
              + (f"; over it: {', '.join(os.path.basename(r['path']) for r in over)}." if over else "."),
              f"Screened with covseg_fast {__version__} at commit {code_commit()}, backend "
              f"{rows[0]['backend'] if rows else '?'}, device {rows[0]['device'] if rows else 'cpu'}."]
    if len(args.thresholds) > 1:
        lines += ["", "Burden % at other probability thresholds (`covseg screen --threshold T`):", "",
                  "| volume | " + " | ".join(f"T = {t:g}" for t in args.thresholds) + " |",
                  "|---|" + "---|" * len(args.thresholds)]
        for i, r in enumerate(rows):
            cells = " | ".join(_num(runs[t][i]["burden_pct"], 2) for t in args.thresholds)
            lines.append(f"| {os.path.basename(r['path'])} | {cells} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
