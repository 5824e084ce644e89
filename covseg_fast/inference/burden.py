"""Infection counted where it can be: the model's mask restricted to the lungs, and the volumes and burdens.

The infection that counts is the model's infection (any class > 0) on the anatomy's labels 1–4: the right
and left lung and the margin of ``MARGIN_MM`` around them (:mod:`.anatomy`); everything else is
"excluded" (reported as ``excluded_outside_lung_ml``, and kept by ``--save-unrestricted-mask``).

Per side (right, left) and for both lungs together:

- ``lung_*_ml``: the lung mask plus the counted infection in its margin (lesions at the pleura that the
  air-based mask cannot hold are lung too);
- ``infected_*_ml``: the counted infection;
- ``burden_*_pct``: 100 × infected / lung (empty when there is no lung).

With a multi-class model (0 background, 1 ground-glass opacity, 2 consolidation, ...) each class also gets
``<class>_ml`` and ``<class>_burden_pct`` (both lungs).
"""
from __future__ import annotations

import numpy as np

from .anatomy import LEFT_LUNG, LEFT_MARGIN, OUTSIDE, RIGHT_LUNG, RIGHT_MARGIN, Anatomy

CLASS_NAMES_3 = ("ggo", "consolidation")  # covseg train --multiclass: 1 ground-glass opacity, 2 consolidation


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the infection classes 1..K-1 of a K-class model (``()`` for a binary model)."""
    if num_classes <= 1:
        return ()
    if num_classes == 3:
        return CLASS_NAMES_3
    return tuple(f"class{c}" for c in range(1, num_classes))


def restrict(infection: np.ndarray, anatomy: Anatomy) -> tuple[np.ndarray, int]:
    """(restricted copy, voxels excluded): ``infection`` (X, Y, Z) uint8 classes or bool, zero outside labels 1–4."""
    out = infection.copy()
    outside = anatomy.labels == OUTSIDE
    excluded = int(np.count_nonzero(out[outside]))
    out[outside] = 0
    return out, excluded


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 4) if whole > 0 else None


def case_statistics(infection: np.ndarray, anatomy: Anatomy, voxel_ml: float, excluded_voxels: int,
                    names: tuple[str, ...] = ()) -> dict:
    """Volumes (mL) and burdens (%) of the restricted ``infection`` (uint8 classes, 0 = none, or bool).

    ``names``: the infection classes' names (:func:`class_names`); empty for a binary model.
    """
    found = infection > 0
    where = anatomy.labels[found]                                 # the anatomy label of every infected voxel
    classes = infection[found].astype(np.int64)
    per_label = np.bincount(where, minlength=5)
    lung_voxels = {"right": int(np.count_nonzero(anatomy.labels == RIGHT_LUNG)),
                   "left": int(np.count_nonzero(anatomy.labels == LEFT_LUNG))}
    sides = {"right": (RIGHT_LUNG, RIGHT_MARGIN), "left": (LEFT_LUNG, LEFT_MARGIN)}
    out = {}
    lung_total = inf_total = 0
    for side, (lung_lbl, margin_lbl) in sides.items():
        lung_n = lung_voxels[side] + int(per_label[margin_lbl])
        inf_n = int(per_label[lung_lbl] + per_label[margin_lbl])
        out[f"lung_{side}_ml"] = round(lung_n * voxel_ml, 3)
        out[f"infected_{side}_ml"] = round(inf_n * voxel_ml, 3)
        out[f"burden_{side}_pct"] = _pct(inf_n, lung_n)
        lung_total += lung_n
        inf_total += inf_n
    stats = {"lung_ml": round(lung_total * voxel_ml, 3), "infected_ml": round(inf_total * voxel_ml, 3),
             "burden_pct": _pct(inf_total, lung_total)}
    stats.update(out)
    stats["excluded_outside_lung_ml"] = round(excluded_voxels * voxel_ml, 3)
    if names:
        per_class = np.bincount(classes, minlength=len(names) + 1)
        for c, name in enumerate(names, start=1):
            stats[f"{name}_ml"] = round(int(per_class[c]) * voxel_ml, 3)
            stats[f"{name}_burden_pct"] = _pct(int(per_class[c]), lung_total)
    return stats
