"""The anatomy of one case: body → lungs (right, left) → margin → checks, as one uint8 label map.

Model-free and computed before the model's output is seen (in the decoding workers of `covseg screen`).
The label map (canonical RAS+ grid, the volume's ``data`` shape) holds:

====  ==============================================================================
  0   outside: never counted (body wall, heart, abdomen, table, air, padding)
  1   right lung (:mod:`.lungs`)
  2   left lung
  3   margin of the right lung: within ``MARGIN_MM`` of the lungs (:mod:`.margin`), right of the cut
  4   margin of the left lung
====  ==============================================================================

Infection is counted on labels 1–4 only (:mod:`covseg_fast.inference.burden`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .body import body_mask
from .checks import lung_checks
from .lungs import lung_masks
from .margin import MARGIN_MM, ball_dilation

OUTSIDE, RIGHT_LUNG, LEFT_LUNG, RIGHT_MARGIN, LEFT_MARGIN = 0, 1, 2, 3, 4


@dataclasses.dataclass
class Anatomy:
    """A case's anatomy label map (X, Y, Z) uint8 (values above) and its checks (:func:`.checks.lung_checks`
    plus ``airway_ml``, ``gas_ml``, ``below_lung_ml``: air-like volume left out of the lungs, and ``margin_mm``)."""

    labels: np.ndarray
    checks: dict

    @property
    def passed(self) -> bool:
        return bool(self.checks.get("passed"))

    def lung_labels(self) -> np.ndarray:
        """(X, Y, Z) uint8: 1 right lung, 2 left lung, 0 elsewhere (the margin dropped)."""
        return np.where(self.labels <= LEFT_LUNG, self.labels, OUTSIDE).astype(np.uint8)


def compute_anatomy(data: np.ndarray, spacing: tuple[float, float, float], voxel_ml: float) -> Anatomy:
    """(X, Y, Z) HU on the canonical grid → :class:`Anatomy`.

    Raises:
        ValueError: ``data`` is not 3-D.
    """
    body = body_mask(data, spacing)
    lungs = lung_masks(data, body, spacing, voxel_ml)
    body.inside = None  # free it: the rest needs the centre line only
    checks = lung_checks(lungs.right, lungs.left, body.center_x, spacing, voxel_ml)
    checks.update(airway_ml=round(lungs.airway_ml, 3), gas_ml=round(lungs.gas_ml, 3),
                  below_lung_ml=round(lungs.below_lung_ml, 3), margin_mm=MARGIN_MM)
    labels = lungs.right.view(np.uint8).copy()  # 1 right lung
    np.putmask(labels, lungs.left, LEFT_LUNG)
    lung = lungs.right | lungs.left
    lungs.right = lungs.left = None
    margin = ball_dilation(lung, MARGIN_MM, spacing)
    margin &= ~lung
    del lung
    np.putmask(labels, margin, RIGHT_MARGIN)
    margin &= np.arange(labels.shape[0])[:, None, None] <= lungs.cut[None, None, :]  # left of the cut: the left lung's
    np.putmask(labels, margin, LEFT_MARGIN)
    return Anatomy(labels=labels, checks=checks)
