"""Case-level (patient-level) splits saved as JSON, so runs are reproducible.

Slices of one volume — and volumes of one patient, via ``groups`` — always land in the same
part: a split never leaks a patient across parts.
JSON format: ``{"format": 1, "seed": s, "kind": "fractions"|"kfold", "parts": {name: [case ids]}}``;
k-fold parts are named ``fold0 … fold{k-1}``.
"""
from __future__ import annotations

import json
import os
import random
from typing import Mapping, Optional, Sequence

from ..atomic import atomic_write

__all__ = ["make_split", "save_split", "load_split", "fold_parts", "SPLIT_FORMAT"]

SPLIT_FORMAT = 1


def _alloc(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of n groups; every part with fraction > 0 gets ≥ 1 when n allows."""
    raw = {k: n * f for k, f in fractions.items()}
    counts = {k: int(v) for k, v in raw.items()}
    rest = n - sum(counts.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), list(raw).index(k)))[:rest]:
        counts[k] += 1
    for k, f in fractions.items():  # move one group to an empty part that asked for some
        if f > 0 and counts[k] == 0:
            donor = max(counts, key=lambda d: counts[d])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[k] += 1
    return counts


def make_split(case_ids: Sequence[str], fractions: Optional[Mapping[str, float]] = None, k_folds: Optional[int] = None,
               seed: int = 0, groups: Optional[Mapping[str, str]] = None, path: Optional[str] = None) -> dict:
    """Split case ids into named parts by fractions, or into k folds, at patient level.

    Args:
        case_ids: volume/case ids (unique).
        fractions: e.g. ``{"train": 0.7, "val": 0.1, "test": 0.2}`` (sum 1). Exclusive with ``k_folds``.
        k_folds: number of folds (≥ 2).
        seed: shuffling seed (``random.Random(seed)`` over the sorted groups).
        groups: case id → patient id; cases of one patient stay together. Default: each case alone.
        path: JSON file; if it exists the split is loaded from it and must hold exactly ``case_ids``,
            otherwise the new split is written there (atomically).
    Returns:
        the split dict (see module docstring).
    Raises:
        ValueError: bad fractions/k, duplicate ids, too few groups, or a saved split over other cases.
    """
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("make_split: duplicate case ids")
    if path is not None and os.path.exists(path):
        split = load_split(path)
        saved = sorted(c for part in split["parts"].values() for c in part)
        if saved != sorted(ids):
            raise ValueError(f"{path}: saved split covers other cases ({len(saved)} saved, {len(ids)} given); "
                             f"delete it or pass another path")
        return split
    if (fractions is None) == (k_folds is None):
        raise ValueError("make_split: give exactly one of fractions or k_folds")
    group_of = {c: str(groups.get(c, c)) if groups else c for c in ids}
    unique = sorted(set(group_of.values()))
    random.Random(seed).shuffle(unique)
    if fractions is not None:
        if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
            raise ValueError(f"make_split: fractions must be ≥ 0 and sum to 1, got {dict(fractions)}")
        counts = _alloc(len(unique), fractions)
        parts_groups, start = {}, 0
        for name in fractions:
            parts_groups[name] = unique[start:start + counts[name]]
            start += counts[name]
        kind = "fractions"
    else:
        if k_folds < 2 or k_folds > len(unique):
            raise ValueError(f"make_split: k_folds must be in 2..{len(unique)} (number of patients), got {k_folds}")
        parts_groups = {f"fold{i}": unique[i::k_folds] for i in range(k_folds)}
        kind = "kfold"
    parts = {name: sorted((c for c in ids if group_of[c] in set(gs)), key=ids.index)
             for name, gs in parts_groups.items()}
    split = {"format": SPLIT_FORMAT, "seed": seed, "kind": kind, "parts": parts}
    if groups:
        split["groups"] = {c: group_of[c] for c in ids}
    if path is not None:
        save_split(split, path)
    return split


def save_split(split: dict, path: str) -> None:
    """Write a split as JSON atomically."""
    with atomic_write(path, "w") as fh:
        json.dump(split, fh, indent=1, sort_keys=True)
        fh.write("\n")


def load_split(path: str) -> dict:
    """Read a split JSON. Raises ValueError naming the file when it is not a split."""
    try:
        with open(path) as fh:
            split = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read split ({exc})") from exc
    if not isinstance(split, dict) or split.get("format") != SPLIT_FORMAT or not isinstance(split.get("parts"), dict):
        raise ValueError(f"{path}: not a covseg split file (format {SPLIT_FORMAT})")
    return split


def fold_parts(split: dict, fold: int) -> dict[str, list[str]]:
    """Train/val case ids of fold ``fold`` of a k-fold split (val = that fold, train = the rest)."""
    if split.get("kind") != "kfold":
        raise ValueError("fold_parts: not a k-fold split")
    names = sorted(split["parts"], key=lambda n: int(n[4:]))
    if not 0 <= fold < len(names):
        raise ValueError(f"fold_parts: fold must be in 0..{len(names) - 1}, got {fold}")
    val = list(split["parts"][names[fold]])
    train = [c for n in names if n != names[fold] for c in split["parts"][n]]
    return {"train": train, "val": val}
