"""Per-case outputs of `covseg screen`: statistics, JSON and PNG montage.

Which files a case has, and everything else about the output folder, lives in :mod:`.output_folder`
(``OutputPlan`` and ``is_own_output`` are re-exported here for older imports).
"""
from __future__ import annotations

import os

import numpy as np

from ..atomic import atomic_save
from ..io.volume import Volume
from ..io.writer import save_mask, save_probabilities
from .lung import volume_ml
from .output_folder import OutputPlan, is_own_output  # noqa: F401  (re-exported)
from .report import write_json


def case_statistics(mask: np.ndarray, lung: np.ndarray, volume: Volume) -> dict:
    """Infected volume, lung volume and burden (% of lung) from canonical-grid masks."""
    vml = volume.voxel_ml
    lung_ml = volume_ml(lung, vml)
    inf_ml = volume_ml(mask, vml)
    in_lung = volume_ml(mask & lung, vml)
    return {"lung_ml": round(lung_ml, 3), "infected_ml": round(inf_ml, 3),
            "infected_in_lung_ml": round(in_lung, 3),
            "burden_pct": round(100.0 * in_lung / lung_ml, 4) if lung_ml > 0 else None}


def display_slice(plane: np.ndarray) -> np.ndarray:
    """Canonical axial plane (X→R, Y→A) → radiological display (rows posterior-ward, columns to the left)."""
    return plane[::-1, ::-1].T


def write_montage(path: str, volume: Volume, mask: np.ndarray, lung: np.ndarray,
                  window: tuple[float, float], n: int = 6, tile: int = 256) -> None:
    """PNG of ``n`` axial slices (spread over the lung) in radiological view, mask in red."""
    from PIL import Image

    z = volume.data.shape[2]
    with_lung = np.flatnonzero(lung.any(axis=(0, 1)))
    span = with_lung if with_lung.size else np.arange(z)
    ks = np.unique(span[np.linspace(0, span.size - 1, min(n, span.size)).round().astype(int)])
    lo, hi = window
    sx, sy = volume.spacing[0], volume.spacing[1]
    tiles = []
    for k in ks:
        grey = np.clip((display_slice(volume.data[:, :, k]) - lo) / (hi - lo), 0, 1) * 255
        m = display_slice(mask[:, :, k])
        rgb = np.repeat(grey[..., None], 3, axis=2)
        rgb[m] = 0.5 * rgb[m] + 0.5 * np.array([255.0, 0.0, 0.0])
        img = Image.fromarray(rgb.astype(np.uint8))
        h_mm, w_mm = img.height * sy, img.width * sx
        scale = tile / max(h_mm, w_mm)
        img = img.resize((max(1, round(w_mm * scale)), max(1, round(h_mm * scale))), Image.BILINEAR)
        canvas = Image.new("RGB", (tile, tile))
        canvas.paste(img, ((tile - img.width) // 2, (tile - img.height) // 2))
        tiles.append(canvas)
    cols = min(3, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * tile))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * tile, (i // cols) * tile))
    atomic_save(path, lambda tmp: sheet.save(tmp, format="PNG"))


def write_case(plan: OutputPlan, case_id: str, volume: Volume, mask: np.ndarray, lung: np.ndarray,
               prob: np.ndarray | None, record: dict, window: tuple[float, float]) -> dict:
    """Write all outputs of one case (JSON last) and return the completed record."""
    paths = plan.paths(case_id)
    src = os.path.realpath(volume.path)
    for p in paths.values():
        if os.path.realpath(p) == src:
            raise RuntimeError(f"output {p} would overwrite the input")
    if "mask" in paths:
        save_mask(paths["mask"], mask, volume)
    if "probabilities" in paths and prob is not None:
        save_probabilities(paths["probabilities"], prob, volume)
    if "montage" in paths:
        write_montage(paths["montage"], volume, mask, lung, window)
    record = dict(record, **case_statistics(mask, lung, volume))
    record["outputs"] = {k: os.path.basename(v) for k, v in paths.items()}
    write_json(paths["json"], record)
    return record
