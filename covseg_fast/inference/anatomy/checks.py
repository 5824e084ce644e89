"""Plausibility checks of a case's lung mask: does it look like two whole adult lungs inside the body?

Each check that fails gives one line; any failure makes the case's status ``warning`` and its burden
"not trustworthy" (the numbers are still reported). The bounds are wide on purpose: they catch masks that
cannot be two whole lungs, not unusual patients.

- volume: both lungs together hold ``LUNG_ML`` (1.5–9.5 L); adult lungs at CT hold about 2.5–8 L
  (below: a partial scan, a child, lungs filled by disease, or not a chest CT; above: air that is not lung);
- balance: the smaller lung holds at least ``MIN_BALANCE`` of the larger one's volume (the left lung is
  usually 0.8–0.9 of the right); below, one lung is missing from the mask (collapse, effusion, dense
  consolidation, a pneumonectomy, or one lung outside the scan);
- z-extent: the lungs span at least ``MIN_Z_EXTENT_MM`` from top to bottom (adults: about 200–300 mm), and
  neither the first nor the last slice of the scan cuts through them (a lung section there of at least
  ``CUT_FRACTION`` of the largest section: the scan stops inside the lungs);
- position: the right lung lies on the patient's right of the body's centre line and the left lung on the
  left, and the lungs do not reach the edge of the image (a cropped field of view leaves lung out).
"""
from __future__ import annotations

import numpy as np

LUNG_ML = (1500.0, 9500.0)
MIN_BALANCE = 0.5
MIN_Z_EXTENT_MM = 120.0
CUT_FRACTION = 0.2
EDGE_FRACTION = 0.001


def _z_range(mask: np.ndarray) -> tuple[int, int] | None:
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def lung_checks(right: np.ndarray, left: np.ndarray, center_x: np.ndarray,
                spacing: tuple[float, float, float], voxel_ml: float) -> dict:
    """Measures and verdicts for the lung mask (right/left (X, Y, Z) bool on the canonical grid).

    Returns a dict: ``lung_mask_ml``, ``right_ml``, ``left_ml``, ``balance`` (smaller / larger), ``z_extent_mm``,
    ``passed`` (bool) and ``failed`` (one line per failed check, empty when all pass).
    """
    r_n, l_n = int(np.count_nonzero(right)), int(np.count_nonzero(left))
    r_ml, l_ml = r_n * voxel_ml, l_n * voxel_ml
    total = r_ml + l_ml
    failed = []
    out = {"lung_mask_ml": round(total, 3), "right_ml": round(r_ml, 3), "left_ml": round(l_ml, 3)}
    if r_n + l_n == 0:
        out.update(balance=None, z_extent_mm=None, passed=False,
                   failed=["no lung found (not a chest CT, the lungs are outside the scan, or they hold no air)"])
        return out
    balance = min(r_ml, l_ml) / max(r_ml, l_ml)
    out["balance"] = round(balance, 4)
    if not LUNG_ML[0] <= total <= LUNG_ML[1]:
        failed.append(f"lung volume {total:.0f} mL is outside {LUNG_ML[0]:.0f}-{LUNG_ML[1]:.0f} mL "
                      f"({'a partial scan, or lungs filled by disease' if total < LUNG_ML[0] else 'air that is not lung'})")
    if balance < MIN_BALANCE:
        small = "left" if l_ml < r_ml else "right"
        failed.append(f"the {small} lung holds {balance:.2f} of the other's volume (below {MIN_BALANCE}): "
                      "part of a lung is missing from the mask")
    both = right | left
    z0, z1 = _z_range(both)
    extent = (z1 - z0 + 1) * float(spacing[2])
    out["z_extent_mm"] = round(extent, 2)
    if extent < MIN_Z_EXTENT_MM:
        failed.append(f"the lungs span {extent:.0f} mm from top to bottom (below {MIN_Z_EXTENT_MM:.0f} mm): "
                      "the scan covers only part of them")
    sections = both.sum(axis=(0, 1))
    cut = [name for name, k in (("first (lowest)", 0), ("last (highest)", both.shape[2] - 1))
           if sections[k] >= CUT_FRACTION * sections.max()]
    if cut:
        which = f"the {cut[0]} slice cuts" if len(cut) == 1 else "the first (lowest) and last (highest) slices cut"
        failed.append(f"{which} through the lungs: the scan stops inside them")
    x = np.arange(both.shape[0])
    for name, side, sign in (("right", right, 1), ("left", left, -1)):
        counts = side.sum(axis=(1, 2))
        if counts.sum() == 0:
            continue
        cx = float((x * counts).sum() / counts.sum())
        z = np.flatnonzero(side.any(axis=(0, 1)))
        mid = np.nanmedian(center_x[z]) if np.isfinite(center_x[z]).any() else (both.shape[0] - 1) / 2.0
        if sign * (cx - mid) <= 0:
            failed.append(f"the {name} lung's centre is not on the patient's {name} of the body's centre line")
    edge = (np.count_nonzero(both[0]) + np.count_nonzero(both[-1]) + np.count_nonzero(both[:, 0]) +
            np.count_nonzero(both[:, -1]))
    if edge > EDGE_FRACTION * (r_n + l_n):
        failed.append("the lungs reach the edge of the image (a cropped field of view): lung outside it is not counted")
    out.update(passed=not failed, failed=failed)
    return out
