"""Per-image scoring and dataset aggregation for `covseg evaluate` (MODELS.md §7–8).

For every image, :class:`MetricAccumulator` scores

- the protocol map (``infnet``: §8.3 normalised map; ``threshold``: plain probability):
  the 256-threshold curves (Dice, Sen, Spec, Pre, F_β, E_φ), their per-image means,
  S_α, MAE and the adaptive E_φ;
- the probability binarised at 0.5 (σ(z) > 0.5): Dice, Sen, Spec, Precision, Recall,
  IoU, mIoU, per image; the confusion matrices are also summed for the dataset-global variant.

Aggregation (§7.3): curve_X(T) = mean over images; meanX = mean over T; maxX = max over T.
"""
from __future__ import annotations

from typing import Any

import torch

from .confusion import binarize, confusion_counts, scores_from_counts
from .protocol import PROTOCOLS, score_map, threshold_map
from .structure import mae, s_measure
from .sweep import adaptive_emeasure, sweep_counts, sweep_scores, thresholds

__all__ = ["MetricAccumulator", "CURVE_KEYS", "BINARY_KEYS"]

CURVE_KEYS = ("dice", "sensitivity", "specificity", "precision", "fmeasure", "emeasure")
BINARY_KEYS = ("dice", "sensitivity", "specificity", "precision", "recall", "iou", "miou")


class MetricAccumulator:
    """Scores (logits, GT) pairs one at a time and aggregates them.

    Args:
        protocol: "infnet" or "threshold".
    """

    def __init__(self, protocol: str = "infnet") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        self.protocol = protocol
        self.rows: list[dict[str, Any]] = []
        self._curve_sum: dict[str, torch.Tensor] = {}
        self._global_counts = torch.zeros(4, dtype=torch.int64)

    def update(self, logits: torch.Tensor, gt: torch.Tensor, image_id: str = "") -> dict[str, Any]:
        """Score one image.

        Args:
            logits: (C, h, w) or (1, C, h, w) model output at any size (resized to the GT here).
            gt: (H, W) GT; foreground where > 0.5 (bool, {0,1} float, …).
            image_id: name written in the per-image row.
        Returns:
            the per-image row (floats).
        """
        g = gt > 0.5 if gt.dtype != torch.bool else gt
        size = tuple(g.shape)
        p = score_map(logits, size, self.protocol)
        tp, num_rec, n_fg, n_pix = sweep_counts(p, g)
        curves = sweep_scores(tp, num_rec, n_fg, n_pix)
        for k in CURVE_KEYS:
            c = curves[k][0].cpu()
            self._curve_sum[k] = self._curve_sum[k] + c if k in self._curve_sum else c.clone()
        prob = threshold_map(logits, size)
        counts = confusion_counts(binarize(prob), g).cpu()
        self._global_counts += counts
        binary = scores_from_counts(counts)
        row: dict[str, Any] = {"id": image_id, "height": size[0], "width": size[1],
                               "gt_fraction": float(g.double().mean())}
        row.update({f"mean_{k}": float(curves[k][0].mean())
                    for k in ("dice", "sensitivity", "specificity", "emeasure")})
        row["max_dice"] = float(curves["dice"][0].max())
        row["s_measure"] = float(s_measure(p, g))
        row["adaptive_emeasure"] = float(adaptive_emeasure(p, g))
        row["mae"] = float(mae(p, g))
        row.update({f"{k}@0.5": float(binary[k]) for k in BINARY_KEYS})
        # raw counts too: per-volume (3-D) scores sum them over a volume's slices (metrics.per_volume)
        row.update({f"{k}@0.5": int(v) for k, v in zip(("tp", "fp", "fn", "tn"), counts.tolist())})
        self.rows.append(row)
        return row

    def __len__(self) -> int:
        return len(self.rows)

    def curves(self) -> dict[str, list[float]]:
        """Image-averaged curves over the 256 descending thresholds, plus ``threshold``."""
        if not self.rows:
            raise ValueError("no image scored yet")
        n = len(self.rows)
        out = {"threshold": thresholds().tolist()}
        out.update({k: (v / n).tolist() for k, v in self._curve_sum.items()})
        return out

    def summary(self) -> dict[str, Any]:
        """Dataset summary: the Inf-Net table columns, sweep aggregates and the 0.5-threshold metrics."""
        if not self.rows:
            raise ValueError("no image scored yet")
        n = len(self.rows)
        curve = {k: v / n for k, v in self._curve_sum.items()}

        def mean_of(key: str) -> float:
            return float(sum(r[key] for r in self.rows) / n)

        table = {"Dice": float(curve["dice"].mean()), "Sen": float(curve["sensitivity"].mean()),
                 "Spec": float(curve["specificity"].mean()), "S_alpha": mean_of("s_measure"),
                 "E_phi_mean": float(curve["emeasure"].mean()), "MAE": mean_of("mae")}
        sweep = {"meanDic": table["Dice"], "maxDic": float(curve["dice"].max()),
                 "meanSen": table["Sen"], "maxSen": float(curve["sensitivity"].max()),
                 "meanSpe": table["Spec"], "meanPre": float(curve["precision"].mean()),
                 "meanF": float(curve["fmeasure"].mean()), "maxF": float(curve["fmeasure"].max()),
                 "meanEm": table["E_phi_mean"], "maxEm": float(curve["emeasure"].max()),
                 "adpEm": mean_of("adaptive_emeasure")}
        glob = scores_from_counts(self._global_counts)
        binary = {"per_image_mean": {k: mean_of(f"{k}@0.5") for k in BINARY_KEYS},
                  "dataset_global": {k: float(glob[k]) for k in BINARY_KEYS}}
        return {"protocol": self.protocol, "n_images": n, "table": table, "sweep": sweep,
                "threshold_0.5": binary}
