"""Which HU window makes real CT look like the training images? Measures and writes the evidence.

The COVID-SemiSeg slices were exported from HU volumes as 8-bit images with some window; screening
maps HU to [0, 1] with a window too. This tool measures two landmarks on both sides:

- images: the modes of aerated lung and of soft tissue (covseg_fast.data.intensity.image_landmarks),
  per labelled slice and per pseudo-labelled source (Ma et al. "coronacases" and "radiopaedia");
- real CT volumes (HU): the mode of lung parenchyma (inside the screening lung mask, eroded by one
  voxel) and the mode of soft tissue (voxels in -200 … 200 HU);

and solves for the window that maps the volumes' HU landmarks onto the labelled images' grey
landmarks (data.intensity.window_for). It writes a Markdown report (default docs/intensity_window.md).

    python tools/intensity_match.py [--data DIR] [--ct FILE ...] [--out docs/intensity_window.md]
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import sys

import numpy as np
from scipy.ndimage import binary_erosion, gaussian_filter1d

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from covseg_fast.data.intensity import image_landmarks, median_landmarks, window_for  # noqa: E402
from covseg_fast.data.slices import read_grey  # noqa: E402
from covseg_fast.windows import LUNG_WINDOW  # noqa: E402

SHARED = os.path.join(os.path.dirname(HERE), "..", "shared", "data")
DEFAULT_CT = ["ct/lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz", "ct/totalseg_ct_cropped/ct_cropped.nii.gz",
              "ct/cip_copdgene_ct64/ct-64_LPS.nii.gz"]
DEMO = os.path.join(os.path.dirname(HERE), "covseg_fast", "assets", "demo_ct.nii.gz")


def _mode(values: np.ndarray, lo: float, hi: float, bins: int) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = gaussian_filter1d(hist.astype(np.float64), 3)
    i = int(np.argmax(hist))
    return float((edges[i] + edges[i + 1]) / 2)


def volume_landmarks(path: str) -> tuple[float, float, float]:
    """(lung HU mode, soft-tissue HU mode, lung mL) of a CT volume."""
    from covseg_fast.inference.anatomy import compute_anatomy
    from covseg_fast.inference.anatomy.case import LEFT_LUNG, RIGHT_LUNG
    from covseg_fast.io import read_case

    vol = read_case(path, "nifti")
    labels = compute_anatomy(vol.data, vol.spacing, vol.voxel_ml).labels
    lung = (labels == RIGHT_LUNG) | (labels == LEFT_LUNG)
    core = binary_erosion(lung, iterations=1)
    tissue = vol.data[(vol.data > -200) & (vol.data < 200)]
    return (_mode(vol.data[core], -1100, -400, 350), _mode(tissue, -200, 200, 400),
            float(lung.sum()) * vol.voxel_ml)


def image_set(pattern: str) -> dict[str, tuple[float, float]]:
    return {os.path.basename(f): image_landmarks(read_grey(f)) for f in sorted(glob.glob(pattern))}


def _iqr(marks: dict, k: int) -> str:
    v = np.array([m[k] for m in marks.values()])
    return f"{np.median(v):.3f} ({np.percentile(v, 25):.3f}–{np.percentile(v, 75):.3f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(SHARED, "covid-semiseg"))
    ap.add_argument("--ct", nargs="*", default=None, help="HU volumes (default: ../shared/data/ct and the demo)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "intensity_window.md"))
    args = ap.parse_args(argv)
    cts = args.ct if args.ct is not None else [os.path.join(SHARED, p) for p in DEFAULT_CT] + [DEMO]

    labelled = image_set(os.path.join(args.data, "train", "Imgs", "*"))
    pseudo = image_set(os.path.join(args.data, "pseudo", "Imgs", "*"))
    sources = {"labelled (50 slices)": labelled,
               "pseudo: coronacases": {k: v for k, v in pseudo.items() if "coronacases" in k},
               "pseudo: radiopaedia": {k: v for k, v in pseudo.items() if "radiopaedia" in k}}
    ref = median_landmarks(labelled)
    volumes = {os.path.basename(p): volume_landmarks(p) for p in cts}
    # the ×1/8-downsampled CIP volume blurs soft tissue into fat: it is shown but not pooled
    pooled = [v for k, v in volumes.items() if not k.startswith("ct-64")]
    hu = (float(np.median([v[0] for v in pooled])), float(np.median([v[1] for v in pooled])))
    low, high = window_for(ref, hu)
    chosen = (round(low / 10) * 10, round(high / 10) * 10)

    lines = ["# The HU window that matches real CT to the training images", "",
             f"Measured by `python tools/intensity_match.py` on {datetime.date.today()} (CPU). Landmarks: the mode of "
             "aerated lung and the mode of soft tissue (`covseg_fast/data/intensity.py` for images; for HU volumes the "
             "lung mode inside the screening lung mask eroded by one voxel, and the mode of -200 … 200 HU).", "",
             "## The images (grey level in [0, 1]: median, interquartile range)", "",
             "| image set | slices | lung | soft tissue | window they imply for the pooled HU landmarks below |",
             "|---|---|---|---|---|"]
    for name, marks in sources.items():
        lo, hi = window_for(median_landmarks(marks), hu)
        lines.append(f"| {name} | {len(marks)} | {_iqr(marks, 0)} | {_iqr(marks, 1)} | {lo:.0f} … {hi:.0f} HU |")
    lines += ["", "## Real CT volumes (HU)", "",
              f"| volume | lung mode | soft-tissue mode | lung mL | with the lung window {LUNG_WINDOW[0]:g} … "
              f"{LUNG_WINDOW[1]:g}: lung, tissue | with {chosen[0]} … {chosen[1]}: lung, tissue |", "|---|---|---|---|---|---|"]

    def grey(h, w):
        return (h - w[0]) / (w[1] - w[0])

    for name, (hl, ht, ml) in volumes.items():
        lines.append(f"| {name} | {hl:.0f} | {ht:.0f} | {ml:.0f} | {grey(hl, LUNG_WINDOW):.3f}, {grey(ht, LUNG_WINDOW):.3f} "
                     f"| {grey(hl, chosen):.3f}, {grey(ht, chosen):.3f} |")
    lines += ["", f"Labelled images: lung {ref[0]:.3f}, soft tissue {ref[1]:.3f}. Pooled HU landmarks (median over the "
              f"volumes except the ×1/8-downsampled CIP case, whose soft tissue is blurred into fat): lung {hu[0]:.0f} HU, "
              f"soft tissue {hu[1]:.0f} HU. The window mapping them onto the labelled images is {low:.0f} … {high:.0f} HU, "
              f"rounded to **{chosen[0]} … {chosen[1]} HU**.", "",
              "## What follows", "",
              f"- With the lung window {LUNG_WINDOW[0]:g} … {LUNG_WINDOW[1]:g} real lungs reach the model at about "
              f"{grey(hu[0], LUNG_WINDOW):.2f}, brighter than the {ref[0]:.2f} of the lungs it was trained on (ground-glass "
              "opacity is exactly 'brighter lung'); soft tissue agrees within a few hundredths.",
              f"- The shipped model records the window {chosen[0]} … {chosen[1]} in its checkpoint (`input.window`), so "
              "`covseg screen` and `covseg evaluate --volumes` apply it unless `--window` is given.",
              "- The 1119 'coronacases' pseudo-labelled slices (70 % of the 1600) were exported with a far wider window "
              "than the labelled ones; `--set pseudo_intensity=match` maps each of their volumes linearly onto the "
              "labelled images' landmarks before the pseudo-label stage (`covseg_fast/data/intensity.py`).",
              "- The landmarks of the real volumes vary by about ±40 HU (scanner, kernel, disease), so the window is "
              "a best match, not an exact inverse; an 8-bit export also clips everything above the window."]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
