"""Evaluate a segmentation model on a folder of 2-D slices (MODELS.md §7–8).

:class:`Evaluator` runs the model over a :class:`~covseg_fast.data.SliceDataset` (images resized
to the model's input size, bilinear; logits resized back to each GT size), scores every image
with :class:`~covseg_fast.metrics.MetricAccumulator` and writes, atomically, under ``out``:

- ``per_image.csv``: one row per image;
- ``summary.json`` and ``summary.md``: the Inf-Net table columns, the sweep aggregates and the
  threshold-0.5 metrics (per-image mean and dataset-global, labelled);
- ``curves.json``: the image-averaged 256-threshold curves;
- ``pr_curve.png`` (precision–recall) and ``fmeasure_curve.png`` (F_β, Dice, E_φ vs threshold);
- for CT volumes (:class:`~covseg_fast.data.VolumeSliceDataset`) also ``per_volume.csv``: 3-D Dice,
  IoU, sensitivity, precision and predicted vs reference infection volume (mL) per case
  (:mod:`covseg_fast.metrics.per_volume`), summarised in ``summary.json``/``.md``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write
from .data.slices import SliceDataset
from .metrics import PROTOCOLS, MetricAccumulator, volume_rows, volume_summary
from .models.registry import ModelSpec, get_spec, prepare_input
from .plotting import line_plot_png

log = logging.getLogger(__name__)

__all__ = ["Evaluator", "format_summary_markdown"]


def _write_text(path: str, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _per_volume_markdown(pv: dict[str, Any]) -> list[str]:
    scope = "infected slices only (--drop-empty)" if pv["slices"] == "infected" else "every axial slice"
    return ["", f"Per volume ({pv['n_volumes']} volumes, 3-D counts at threshold 0.5 over {scope}):", "",
            "| 3-D Dice | 3-D IoU | Sen | Precision | mean abs volume error (mL) | Pearson r (volumes) |",
            "|---|---|---|---|---|---|",
            f"| {pv['mean_dice_3d']:.4f} | {pv['mean_iou_3d']:.4f} | {pv['mean_sensitivity_3d']:.4f} | "
            f"{pv['mean_precision_3d']:.4f} | {pv['mean_abs_error_ml']:.2f} | "
            + ("–" if pv["volume_pearson_r"] is None else f"{pv['volume_pearson_r']:.3f}") + " |"]


def format_summary_markdown(summary: dict[str, Any]) -> str:
    """Markdown tables of a summary dict (as returned by :meth:`Evaluator.run`)."""
    t = summary["table"]
    lines = [f"# Evaluation: {summary.get('model', '?')} on {summary.get('data', '?')}", "",
             f"protocol `{summary['protocol']}`, {summary['n_images']} images, input "
             f"{'×'.join(map(str, summary.get('input_size', ['?'])))} px"
             + (f" ({summary['input_size_source']})" if summary.get("input_size_source") else ""), "",
             "| Dice | Sen | Spec | S_α | E_φ^mean | MAE |", "|---|---|---|---|---|---|",
             "| " + " | ".join(f"{t[k]:.4f}" for k in ("Dice", "Sen", "Spec", "S_alpha", "E_phi_mean", "MAE")) + " |",
             "", "Dice/Sen/Spec/E_φ: mean over 256 thresholds of the image-averaged curves (Inf-Net toolbox).", "",
             "| " + " | ".join(summary["sweep"]) + " |", "|" + "---|" * len(summary["sweep"]),
             "| " + " | ".join(f"{v:.4f}" for v in summary["sweep"].values()) + " |", "",
             "Threshold 0.5 on the probability (σ(z) > 0.5):", ""]
    b = summary["threshold_0.5"]
    keys = list(b["per_image_mean"])
    lines += ["| aggregation | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, label in (("per_image_mean", "mean over images"), ("dataset_global", "dataset-global (summed counts)")):
        lines.append(f"| {label} | " + " | ".join(f"{b[name][k]:.4f}" for k in keys) + " |")
    if "per_volume" in summary:
        lines += _per_volume_markdown(summary["per_volume"])
    return "\n".join(lines) + "\n"


class Evaluator:
    """Score a model on a slice dataset and write reports.

    Args:
        model: a registered model (built by ``get_model``/``load_model``); eval-mode output is
            logits (B, C, H, W).
        spec: its :class:`ModelSpec` (default: looked up from ``model.covseg_name``).
        device: where to run ("cpu", "cuda", …).
        protocol: "infnet" (§8.3 normalised maps, 256-threshold means) or "threshold" (plain probability).
        batch_size: images per forward pass.
        input_size: (H, W) the model sees (default ``spec.input_size``).
    """

    def __init__(self, model: nn.Module, spec: Optional[ModelSpec] = None, device: str | torch.device = "cpu",
                 protocol: str = "infnet", batch_size: int = 4, input_size: Optional[tuple[int, int]] = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.spec = spec if spec is not None else get_spec(model.covseg_name)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.protocol = protocol
        self.batch_size = batch_size
        self.input_size = tuple(input_size or self.spec.input_size)

    @torch.inference_mode()
    def score(self, dataset: SliceDataset) -> MetricAccumulator:
        """Run the model over ``dataset`` and return the filled accumulator."""
        if len(dataset) == 0:
            raise ValueError("Evaluator: empty dataset")
        acc = MetricAccumulator(self.protocol)
        for start in range(0, len(dataset), self.batch_size):
            items = [dataset[i] for i in range(start, min(start + self.batch_size, len(dataset)))]
            x = torch.stack([F.interpolate(it["image"][None], size=self.input_size, mode="bilinear",
                                           align_corners=False, antialias=True)[0] for it in items])
            x = prepare_input(x.to(self.device), self.spec)
            logits = self.model(x)
            if isinstance(logits, dict):
                logits = logits["out"]
            for it, lg in zip(items, logits):
                acc.update(lg[None], it["mask"][0].to(self.device), str(it["id"]))
        return acc

    def run(self, dataset: SliceDataset, out_dir: str, meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Score ``dataset`` and write the report files into ``out_dir``; returns the summary dict."""
        t0 = time.perf_counter()
        acc = self.score(dataset)
        seconds = time.perf_counter() - t0
        summary = acc.summary()
        summary.update({"model": getattr(self.model, "covseg_name", type(self.model).__name__),
                        "data": getattr(dataset, "root", "?"), "input_size": list(self.input_size),
                        "device": str(self.device), "seconds": round(seconds, 3)})
        summary.update(meta or {})
        os.makedirs(out_dir, exist_ok=True)
        _write_text(os.path.join(out_dir, "per_image.csv"), _csv_text(acc.rows))
        voxel_ml = getattr(dataset, "voxel_ml", None)
        if voxel_ml is not None:  # CT volumes: 3-D scores and infection volumes per case
            vrows = volume_rows(acc.rows, voxel_ml)
            summary["per_volume"] = {**volume_summary(vrows),
                                     "slices": "infected" if getattr(dataset, "drop_empty", False) else "all"}
            _write_text(os.path.join(out_dir, "per_volume.csv"), _csv_text(vrows))
        _write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
        _write_text(os.path.join(out_dir, "summary.md"), format_summary_markdown(summary))
        curves = acc.curves()
        _write_text(os.path.join(out_dir, "curves.json"), json.dumps(curves) + "\n")
        line_plot_png(os.path.join(out_dir, "pr_curve.png"), [("", curves["sensitivity"], curves["precision"])],
                      title=f"Precision-recall ({self.protocol})", xlabel="recall", ylabel="precision")
        th = curves["threshold"]
        line_plot_png(os.path.join(out_dir, "fmeasure_curve.png"),
                      [("F-measure (b2=0.3)", th, curves["fmeasure"]), ("Dice", th, curves["dice"]),
                       ("E-measure", th, curves["emeasure"])],
                      title=f"Scores vs threshold ({self.protocol})", xlabel="threshold", ylabel="score")
        log.info("evaluated %d images in %.1f s: Dice %.4f, S %.4f, MAE %.4f → %s", summary["n_images"], seconds,
                 summary["table"]["Dice"], summary["table"]["S_alpha"], summary["table"]["MAE"], out_dir)
        return summary
