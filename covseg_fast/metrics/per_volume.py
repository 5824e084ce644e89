"""Per-volume (3-D) scores from per-slice rows: what a CT-volume benchmark reports per case.

Why: the slice protocol (MODELS.md §7–8) averages over slices, so a volume's many empty slices
(0/0 = 1) dominate it and it says nothing about the infected volume in mL, the quantity a burden
report rests on. Here the threshold-0.5 confusion counts of a volume's slices (rows with ids
``<case>:<slice>``, scored at native size, so counts are voxels) are summed into one 3-D confusion
matrix per case, which gives 3-D Dice, IoU, sensitivity and precision, and with the voxel volume
the predicted and reference infection volumes in mL.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch

from .confusion import scores_from_counts

__all__ = ["COUNT_KEYS", "volume_rows", "volume_summary"]

COUNT_KEYS = ("tp@0.5", "fp@0.5", "fn@0.5", "tn@0.5")


def volume_rows(rows: Sequence[Mapping[str, Any]], voxel_ml: Optional[Mapping[str, float]] = None
                ) -> list[dict[str, Any]]:
    """One row per case, in first-seen order.

    Args:
        rows: per-slice rows holding ``id`` = ``<case>:<slice>`` and the :data:`COUNT_KEYS`.
        voxel_ml: case → voxel volume in mL; without it (or for a case it lacks) the mL columns are NaN.
    Raises:
        ValueError: a row without a ``<case>:<slice>`` id or without the counts.
    """
    counts: dict[str, list[float]] = {}
    slices: dict[str, int] = {}
    for row in rows:
        case, sep, _ = str(row["id"]).rpartition(":")
        if not sep:
            raise ValueError(f"volume_rows: id {row['id']!r} is not <case>:<slice>")
        missing = [k for k in COUNT_KEYS if k not in row]
        if missing:
            raise ValueError(f"volume_rows: row {row['id']!r} lacks {missing} (scored before counts were kept)")
        acc = counts.setdefault(case, [0.0, 0.0, 0.0, 0.0])
        for i, key in enumerate(COUNT_KEYS):
            acc[i] += float(row[key])
        slices[case] = slices.get(case, 0) + 1
    out = []
    for case, c in counts.items():
        scores = scores_from_counts(torch.tensor(c, dtype=torch.float64))
        tp, fp, fn, _ = c
        ml = (voxel_ml or {}).get(case, math.nan)
        pred_ml, ref_ml = (tp + fp) * ml, (tp + fn) * ml
        out.append({"case": case, "slices": slices[case],
                    **{f"{k}_3d": float(scores[k]) for k in ("dice", "iou", "sensitivity", "precision")},
                    "pred_ml": pred_ml, "ref_ml": ref_ml, "error_ml": pred_ml - ref_ml})
    return out


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def volume_summary(vrows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over cases of the 3-D scores, the mean absolute volume error and the Pearson r of
    predicted vs reference volume (None with fewer than 3 cases or a constant side: JSON-safe)."""
    if not vrows:
        raise ValueError("volume_summary: no case")
    n = len(vrows)
    out: dict[str, Any] = {"n_volumes": n}
    for key in ("dice_3d", "iou_3d", "sensitivity_3d", "precision_3d"):
        out[f"mean_{key}"] = sum(r[key] for r in vrows) / n
    out["mean_abs_error_ml"] = sum(abs(r["error_ml"]) for r in vrows) / n
    pred, ref = [r["pred_ml"] for r in vrows], [r["ref_ml"] for r in vrows]
    out["volume_pearson_r"] = _pearson(pred, ref) if n >= 3 else None
    return out
