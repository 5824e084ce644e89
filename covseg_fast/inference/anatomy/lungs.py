"""Lung mask: the aerated lungs inside the body, without gas below the diaphragm and the central airways,
split into right and left lung.

Algorithm (canonical RAS+ grid: x increases to the patient's right, z upwards; axial slices ``data[:, :, k]``):

1. candidates = voxels with ``PADDING_MAX_HU`` < HU < ``AIR_MAX_HU`` (-400: air and aerated lung; below
   -1500 only padding) inside the body (:mod:`.body`: the table, the air around the patient and outside
   the field of view are never candidates);
2. the trachea and main bronchi are taken out (:mod:`.airway`), which usually also parts the two lungs;
3. 3-D (6-connected) components of the candidates, largest first, each judged in turn:
   - smaller than ``MIN_COMPONENT_ML``, or than ``MIN_FRACTION`` of the largest lung kept so far: dropped;
   - gas: a median HU below ``GAS_MEDIAN_HU`` (-950; aerated lung holds vessels and septa, its median is
     about -900 to -750, while gas in the stomach, bowel or airway is air, about -1000): dropped;
   - below the diaphragm: at least ``BELOW_LUNG_FRACTION`` of its voxels have lung (a component kept before)
     above them in the same (x, y) column: bowel or stomach content under a lung base: dropped;
   - else it is lung;
4. right/left: in every slice the lungs are cut at one x column: near the body's centre line (within
   ``SPLIT_WINDOW`` of the body's width), the column with the fewest lung voxels (the middle of the widest
   gap when there is one; when the lungs touch, their junction line); x beyond the cut is right lung;
5. in every slice each lung's holes are filled (vessels, nodules and dense lesions enclosed by aerated lung;
   a hole enclosed by one lung's voxels lies on that lung's side of the cut, so the two never overlap).

This is a screening aid, not a validated segmentation: dense consolidation or effusion at the lung's
edge is not aerated and is not in the mask (the margin of :mod:`.margin` keeps lesions there counted).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .airway import remove_airway
from .body import Body
from .components import bounding_box, component_stats, fill_holes_inplane, label3d

AIR_MAX_HU = -400.0
PADDING_MAX_HU = -1500.0
MIN_COMPONENT_ML = 5.0
MIN_FRACTION = 0.02
GAS_MEDIAN_HU = -950.0
BELOW_LUNG_FRACTION = 0.5
SPLIT_WINDOW = 0.2
MAX_COMPONENTS = 50  # judged, largest first; the rest are far below MIN_COMPONENT_ML on any real scan


@dataclasses.dataclass
class Lungs:
    """Right and left lung (X, Y, Z) bool, the right/left cut, and what was left out of the candidates (mL)."""

    right: np.ndarray
    left: np.ndarray
    cut: np.ndarray  # (Z,) per slice: x > cut is the right side
    airway_ml: float = 0.0
    gas_ml: float = 0.0
    below_lung_ml: float = 0.0


def _column_top(mask: np.ndarray) -> np.ndarray:
    """(X, Y) int: the highest z holding ``mask`` in each column, -1 where none."""
    any_ = mask.any(axis=2)
    top = mask.shape[2] - 1 - np.argmax(mask[:, :, ::-1], axis=2)
    return np.where(any_, top, -1)


def select_lungs(cand: np.ndarray, data: np.ndarray, voxel_ml: float) -> tuple[np.ndarray, dict]:
    """Step 3: the candidate components judged to be lung (bool), and the mL dropped as gas / below the lung."""
    lung = np.zeros(cand.shape, dtype=bool)
    dropped = {"gas_ml": 0.0, "below_lung_ml": 0.0}
    box = bounding_box(cand)
    if box is None:
        return lung, dropped
    labels, n = label3d(cand[box])
    if n == 0:
        return lung, dropped
    counts, boxes = component_stats(labels)
    order = np.argsort(counts[1:])[::-1][:MAX_COMPONENTS] + 1
    sub_lung = lung[box]
    largest_kept = 0
    top = None
    for lbl in order:
        size = int(counts[lbl])
        if size * voxel_ml < MIN_COMPONENT_ML or size < MIN_FRACTION * largest_kept:
            break
        b = boxes[lbl]
        region = labels[b] == lbl
        if float(np.median(data[box][b][region])) < GAS_MEDIAN_HU:
            dropped["gas_ml"] += size * voxel_ml
            continue
        if top is not None:
            zs = np.arange(b[2].start, b[2].stop)
            below = region & (zs[None, None, :] < top[b[0], b[1]][:, :, None])
            if below.sum() >= BELOW_LUNG_FRACTION * size:
                dropped["below_lung_ml"] += size * voxel_ml
                continue
        sub_lung[b] |= region
        largest_kept = max(largest_kept, size)
        top = _column_top(sub_lung)
    return lung, dropped


def split_right_left(lung: np.ndarray, body: Body) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4: (right, left) bool masks (every lung voxel is in exactly one) and the (Z,) cut: x > cut is right.

    Slices without lung get the cut of the nearest slice with lung (the centre of the image when none has).
    """
    x = lung.shape[0]
    cut = np.full(lung.shape[2], (x - 1) / 2.0)
    with_lung = np.flatnonzero(lung.any(axis=(0, 1)))
    for k in with_lung:
        c = body.center_x[k] if np.isfinite(body.center_x[k]) else (x - 1) / 2.0
        half = SPLIT_WINDOW * (body.width_x[k] if body.width_x[k] > 0 else x)
        lo, hi = max(0, int(np.floor(c - half))), min(x, int(np.ceil(c + half)) + 1)
        cols = lung[lo:hi, :, k].sum(axis=1)
        best = np.flatnonzero(cols == cols.min()) + lo
        runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
        mids = np.array([(r[0] + r[-1]) / 2.0 for r in runs])
        widths = np.array([r.size for r in runs])
        # the widest run of emptiest columns; among equally wide runs the one nearest the centre line
        pick = np.lexsort((np.abs(mids - c), -widths))[0]
        cut[k] = mids[pick]
    if with_lung.size:
        nearest = with_lung[np.abs(np.arange(lung.shape[2])[:, None] - with_lung[None, :]).argmin(axis=1)]
        cut = cut[nearest]
    right_side = np.arange(x)[:, None, None] > cut[None, None, :]
    right = lung & right_side
    left = lung & ~right_side
    return right, left, cut


def lung_masks(data: np.ndarray, body: Body, spacing: tuple[float, float, float], voxel_ml: float) -> Lungs:
    """(X, Y, Z) HU and its :class:`Body` → :class:`Lungs` (algorithm in the module docstring)."""
    cand = data < AIR_MAX_HU                                     # step 1
    cand &= data > PADDING_MAX_HU
    cand &= body.inside
    airway_ml = remove_airway(cand, body.center_x, body.width_x, spacing)  # step 2
    lung, dropped = select_lungs(cand, data, voxel_ml)            # step 3
    del cand
    right, left, cut = split_right_left(lung, body)              # step 4
    del lung
    for side in (right, left):                                   # step 5
        box = bounding_box(side)
        if box is not None:
            side[box] = fill_holes_inplane(side[box].copy())
    return Lungs(right=right, left=left, cut=cut, airway_ml=airway_ml, **dropped)
