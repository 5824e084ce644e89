"""Aggregate a cross-validation study (:mod:`.crossval`) into ``results.json`` and a Markdown table.

One seed's score pools the per-image rows of all its folds: every labelled slice is predicted
once, by the model that did not train on it. The Inf-Net table columns are means over images of
per-image means over the 256 thresholds, which equals the toolbox's mean over thresholds of the
image-averaged curves (both are plain averages), so pooling rows gives the same numbers as scoring
all out-of-fold maps in one :class:`~covseg_fast.metrics.MetricAccumulator`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..metrics.per_volume import volume_rows, volume_summary
from ..train.presets import PRESETS, preset_for_model

__all__ = ["COLUMNS", "PUBLISHED", "seed_scores", "aggregate", "format_markdown"]

# (table column, per-image row key, lower is better)
COLUMNS = [("Dice", "mean_dice", False), ("Sen", "mean_sensitivity", False), ("Spec", "mean_specificity", False),
           ("S_alpha", "s_measure", False), ("E_phi_mean", "mean_emeasure", False), ("MAE", "mae", True),
           ("Dice@0.5", "dice@0.5", False), ("IoU@0.5", "iou@0.5", False), ("mIoU@0.5", "miou@0.5", False),
           ("P@0.5", "precision@0.5", False), ("R@0.5", "recall@0.5", False)]
# volume studies add the mean over held-out volumes of the 3-D Dice at 0.5 (metrics.per_volume)
VOLUME_COLUMN = "Dice3D@0.5"
HEADER = {"S_alpha": "S_α", "E_phi_mean": "E_φ^mean", VOLUME_COLUMN: "3-D Dice@0.5 (per volume)"}

# MODELS.md §9: COVID-SemiSeg lung-infection test set (48 images), Inf-Net toolbox protocol.
PUBLISHED = [
    ("U-Net (VGG16), Inf-Net Table II", dict(Dice=0.439, Sen=0.534, Spec=0.858, S_alpha=0.622, E_phi_mean=0.625, MAE=0.186)),
    ("Inf-Net (Res2Net-50, ImageNet)", dict(Dice=0.682, Sen=0.692, Spec=0.943, S_alpha=0.781, E_phi_mean=0.838, MAE=0.082)),
    ("Semi-Inf-Net (+1600 pseudo-labels)", dict(Dice=0.739, Sen=0.725, Spec=0.960, S_alpha=0.800, E_phi_mean=0.894, MAE=0.064)),
    ("Ref-Net (Med Phys 2022)", dict(Dice=0.755, Sen=0.751, Spec=0.959, S_alpha=0.795, E_phi_mean=0.919, MAE=0.060)),
]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def seed_scores(rows: Sequence[Mapping[str, Any]], volumes: bool = False) -> dict[str, float]:
    """Table columns of one seed from its pooled per-image rows (``volumes``: ids are <case>:<slice>,
    and the per-volume 3-D Dice is added)."""
    if not rows:
        raise ValueError("seed_scores: no scored image")
    scores = {col: sum(float(r[key]) for r in rows) / len(rows) for col, key, _ in COLUMNS}
    if volumes:
        scores[VOLUME_COLUMN] = volume_summary(volume_rows(rows))["mean_dice_3d"]
    return scores


def _columns(volumes: bool) -> list[str]:
    return [c for c, _, _ in COLUMNS] + ([VOLUME_COLUMN] if volumes else [])


def aggregate(results: Sequence[Mapping[str, Any]], arms: Sequence[Mapping[str, Any]], folds: int,
              meta: Mapping[str, Any]) -> dict[str, Any]:
    """results.json content: per arm, per seed scores and mean ± std over seeds with complete folds."""
    volumes = meta.get("unit") == "volume"
    out_arms = []
    for arm in arms:
        mine = [r for r in results if r["arm"] == arm["label"]]
        failures = [{k: r[k] for k in ("seed", "fold", "error")} for r in mine if "error" in r]
        done = [r for r in mine if "error" not in r]
        seeds: dict[int, list] = {}
        for r in done:
            seeds.setdefault(r["seed"], []).append(r)
        per_seed = []
        for seed in sorted(seeds):
            runs = seeds[seed]
            rows = [row for r in runs for row in r["rows"]]
            # the pseudo-label stage is trained once per seed and shared by its folds: counted once
            pseudo = next((r["pseudo_seconds"] for r in runs if "pseudo_seconds" in r), 0.0)
            per_seed.append({"seed": seed, "folds": sorted(r["fold"] for r in runs), "n_images": len(rows),
                             "complete": len(runs) == folds, "scores": seed_scores(rows, volumes),
                             "train_seconds": sum(r["train_seconds"] for r in runs) + pseudo,
                             "pseudo_seconds": pseudo})
        complete = [s for s in per_seed if s["complete"]]
        summary = None
        if complete:
            summary = {col: dict(zip(("mean", "std"), _mean_std([s["scores"][col] for s in complete])))
                       for col in _columns(volumes)}
        fold_seconds = [r["train_seconds"] for r in done]
        out_arms.append({
            **arm, "seeds": per_seed, "n_complete_seeds": len(complete), "summary": summary,
            "failures": failures, "parameters": done[0]["parameters"] if done else None,
            "train_seconds_per_fold": sum(fold_seconds) / len(fold_seconds) if fold_seconds else None,
            "train_seconds_total": sum(fold_seconds),
            "images_per_s": (sum(r["images_per_s"] for r in done) / len(done)) if done else None,
            "epochs": done[0]["epochs"] if done else None})
    trained_at = sorted({r.get("commit") or "unrecorded" for r in results if "error" not in r})
    # a study may be run in several calls (e.g. one process per model): the table names every one
    trained_by = sorted({r.get("command") or meta["command"] for r in results if "error" not in r})
    return {"format": 1, **meta, "folds": folds, "arms": out_arms, "trained_at": trained_at,
            "trained_by": trained_by or [meta["command"]]}


def _cell(summary: Mapping[str, Any] | None, col: str) -> str:
    if summary is None:
        return "–"
    return f"{summary[col]['mean']:.3f} ± {summary[col]['std']:.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _setting_differences(arm: Mapping[str, Any]) -> list[str]:
    """Training settings of an arm that are not its paper preset's values."""
    preset = PRESETS.get(arm["preset"]) or PRESETS[preset_for_model(arm["model"])]
    diffs = []
    for key, value in arm["overrides"].items():
        paper = getattr(preset, key, None)
        if isinstance(paper, tuple):
            paper = list(paper)
        if key != "seed" and value != paper and not (key in ("amp", "channels_last", "num_workers")):
            diffs.append(f"{key} {value} (paper preset: {paper})")
    return diffs


def _commands(commands: Sequence[str]) -> list[str]:
    if len(commands) == 1:
        return [f"Command: `{commands[0]}`", ""]
    return [f"Commands (the models were trained by {len(commands)} calls):", "",
            *[f"- `{c}`" for c in commands], ""]


def _split_unit(unit: str) -> str:
    return "slices" if unit == "slice" else "volumes (a patient's volumes stay together)"


def _volume_settings(report: Mapping[str, Any]) -> str:
    if report.get("unit", "slice") == "slice":
        return ""
    low, high = report["window"]
    return (f" (HU window {low:g} … {high:g}"
            + ("; only slices with infection, in training and scoring" if report.get("drop_empty") else "") + ")")


def _test_set_lines(unit: str, n: int, k: int) -> list[str]:
    """The 'What differs' bullets about the images scored."""
    if unit == "slice":
        return [f"- **Test set.** The 48 COVID-SemiSeg test images are not available here, so these are out-of-fold "
                f"scores on the {n} training slices; each model trains on about {n * (k - 1) // k} of them, not all "
                f"{n}. Different images, fewer training slices: compare the rows with each other, and with the "
                "published numbers only loosely.",
                "- **Splits by slice.** COVID-SemiSeg names no patient per slice, so one patient's slices can sit "
                "on both sides of a split."]
    return [f"- **Test set.** Out-of-fold scores on the axial slices of {n} CT volumes, split by patient; the "
            "published numbers below score the 48 COVID-SemiSeg test slices (selected axial slices, 8-bit "
            "windowed). Different images and slice selection: compare the rows with each other, and with the "
            "published numbers only loosely."]


def format_markdown(report: Mapping[str, Any]) -> str:
    """The results page: table, settings, published numbers and what differs from the papers."""
    k = report["folds"]
    unit = report.get("unit", "slice")
    n = report.get("n_cases", report.get("n_slices"))   # reports written before volume studies
    title = (f"{n} labelled slices" if unit == "slice"
             else f"{n} labelled CT volumes ({report.get('n_patients', n)} patients)")
    lines = [f"# Results: {k}-fold cross-validation on {title}", "",
             f"Generated by `covseg crossval` on {report['date']} · device **{report['device']}** · "
             f"torch {report['versions']['torch']} · covseg_fast {report['versions']['covseg_fast']} · "
             f"models trained at commit {', '.join(f'`{c}`' for c in report.get('trained_at', [])) or '–'}, "
             f"table built at `{report['commit']}`", "",
             *_commands(report.get("trained_by") or [report["command"]]),
             f"Data: `{report['data']}`{_volume_settings(report)}; seeds {report['seeds']}; "
             f"protocol `{report['protocol']}`.", "",
             f"Each seed splits the {_split_unit(unit)} into k folds anew and trains one model per fold on the other "
             "k−1 folds for the full schedule; the **last** checkpoint of each fold scores its held-out fold (no "
             "checkpoint is selected on the images it is scored on). A seed's score pools its out-of-fold "
             f"predictions, one per {'slice' if unit == 'slice' else 'axial slice of the held-out volumes'}; the "
             "table gives mean ± std (sample) over the seeds whose folds all finished. Dice/Sen/Spec/E_φ "
             "are means over the 256 thresholds of the Inf-Net toolbox (MODELS.md §8.3); @0.5 columns threshold "
             "the probability at 0.5 and average over images (MSA-UNet's reporting).", ""]
    cols = _columns(unit == "volume")
    lines += ["| model | seeds | " + " | ".join(HEADER.get(c, c) for c in cols) + " | params | train / fold |",
              "|---|---|" + "---|" * len(cols) + "---|---|"]
    for arm in report["arms"]:
        params = f"{arm['parameters'] / 1e6:.2f} M" if arm["parameters"] else "–"
        lines.append(f"| {arm['label']} | {arm['n_complete_seeds']} | "
                     + " | ".join(_cell(arm["summary"], c) for c in cols)
                     + f" | {params} | {_duration(arm['train_seconds_per_fold'])} |")
    lines += ["", "Per seed (pooled out-of-fold Dice / S_α / MAE, training time of all folds):", ""]
    for arm in report["arms"]:
        for s in arm["seeds"]:
            note = "" if s["complete"] else f" (folds {s['folds']} of {k}: incomplete, not in the table)"
            sc = s["scores"]
            lines.append(f"- {arm['label']} seed {s['seed']}: Dice {sc['Dice']:.3f}, S_α {sc['S_alpha']:.3f}, "
                         f"MAE {sc['MAE']:.3f}, {s['n_images']} slices, {_duration(s['train_seconds'])}"
                         + (f" (pseudo-label stage {_duration(s['pseudo_seconds'])}, shared by the folds)"
                            if s.get("pseudo_seconds") else "") + note)
        for f in arm["failures"]:
            lines.append(f"- {arm['label']} seed {f['seed']} fold {f['fold']} **failed**: {f['error']}")
    lines += ["", "## Settings", ""]
    for arm in report["arms"]:
        if arm.get("settings_unrecorded"):
            lines.append(f"- **{arm['label']}**: model `{arm['model']}`; settings not recorded by its folds (trained "
                         "by an older covseg): rebuild the table with the options of the call that trained them")
            continue
        diffs = _setting_differences(arm)
        lines.append(f"- **{arm['label']}**: model `{arm['model']}` {arm['model_config'] or '(defaults)'}, preset "
                     f"`{arm['preset']}`, {arm['epochs']} epoch{'s' if arm['epochs'] != 1 else ''}"
                     + (f", pseudo-label stage on `{arm['pseudo_data']}`"
                        + (f" ({arm['pseudo_epochs']} epochs)" if arm.get("pseudo_epochs") else "")
                        if arm.get("pseudo_data") else "")
                     + (f"; differs from the paper's preset: {'; '.join(diffs)}" if diffs else "; the paper's preset")
                     + (f"; {arm['images_per_s']:.1f} training images/s" if arm["images_per_s"] else ""))
    lines += ["", "## Published numbers (MODELS.md §9: COVID-SemiSeg test set, 48 images)", "",
              "| method | Dice | Sen | Spec | S_α | E_φ^mean | MAE |", "|---|---|---|---|---|---|---|"]
    for name, nums in PUBLISHED:
        lines.append(f"| {name} | " + " | ".join(f"{nums[c]:.3f}" for c in
                                                   ("Dice", "Sen", "Spec", "S_alpha", "E_phi_mean", "MAE")) + " |")
    lines += ["", "MSA-UNet's paper reports P 87.22, R 84.55, IoU 75.98, mIoU 86.82 on a dataset and split it does "
              "not name (MODELS.md §3.6): not comparable with either table.", "",
              "## What differs from the published protocols", "",
              *_test_set_lines(unit, n, k),
              "- **No ImageNet weights.** Ref-Net's Res2Net-50 (and every model here) starts from random weights; "
              "the published Ref-Net and Inf-Net start from ImageNet-pretrained backbones.",
              f"- **Device.** {report['device']}."]
    smaller = [f"{arm['label']} {arm['model_config']}" for arm in report["arms"] if arm["model_config"]]
    if smaller:
        lines.append(f"- **Model configuration changed** from the registered defaults (the papers' sizes): "
                     f"{'; '.join(smaller)}.")
    if any(arm.get("pseudo_data") for arm in report["arms"]):
        lines.append("- **Pseudo-labels.** They were produced by a model, not drawn by doctors; in Semi-Inf-Net "
                     "that model was trained on the labelled slices, held-out folds included, so those slices may "
                     "have shaped the pseudo-label stage indirectly (its images are other patients').")
    changed = [arm["label"] for arm in report["arms"] if _setting_differences(arm)]
    if changed:
        lines.append(f"- **Shortened or changed training** for {', '.join(changed)} (see Settings): these rows "
                     "do not reproduce the papers' schedules.")
    return "\n".join(lines) + "\n"
