"""Segmentation metrics of both papers, vectorised in torch (CPU or GPU).

- :mod:`.confusion`: Dice, Sen/Recall, Spec, Precision, IoU, mIoU at a fixed threshold
  (per image and dataset-global), MODELS.md §7.4.
- :mod:`.sweep`: the Inf-Net 256-threshold curves with the TP = 0 rule and E_φ (§7.2–7.3).
- :mod:`.structure`: S_α and MAE (§7.1, §7.4).
- :mod:`.protocol`: logits → scored map (Inf-Net normalisation §8.3, or plain threshold).
- :mod:`.aggregate`: :class:`MetricAccumulator` (per-image rows, curves, summary).
- :mod:`.per_volume`: 3-D scores and infection volumes per CT volume from its slices' rows.
"""
from .aggregate import BINARY_KEYS, CURVE_KEYS, MetricAccumulator
from .confusion import binarize, confusion_counts, scores_from_counts
from .per_volume import volume_rows, volume_summary
from .protocol import PROTOCOLS, infnet_map, minmax, probability, score_map, threshold_map
from .structure import mae, s_measure
from .sweep import (NUM_THRESHOLDS, adaptive_emeasure, emeasure_from_counts, sweep_counts, sweep_scores,
                    thresholds)

__all__ = ["BINARY_KEYS", "CURVE_KEYS", "MetricAccumulator", "binarize", "confusion_counts",
           "scores_from_counts", "PROTOCOLS", "infnet_map", "minmax", "probability", "score_map",
           "threshold_map", "mae", "s_measure", "NUM_THRESHOLDS", "adaptive_emeasure",
           "emeasure_from_counts", "sweep_counts", "sweep_scores", "thresholds", "volume_rows", "volume_summary"]
