"""Per-case outputs of `covseg screen`: names, completeness, statistics, JSON and PNG montage."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from ..atomic import atomic_save
from ..io.volume import Volume
from ..io.writer import save_mask, save_probabilities
from .lung import volume_ml
from .report import read_json, write_json


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """Which files a case produces in ``out_dir``."""

    out_dir: str
    masks: bool = True
    probabilities: bool = False
    montage: bool = True

    def paths(self, case_id: str) -> dict[str, str]:
        """Output kind → path for ``case_id`` (the JSON is written last and marks completion)."""
        p = {}
        if self.masks:
            p["mask"] = os.path.join(self.out_dir, f"{case_id}_infection.nii.gz")
        if self.probabilities:
            p["probabilities"] = os.path.join(self.out_dir, f"{case_id}_probabilities.nii.gz")
        if self.montage:
            p["montage"] = os.path.join(self.out_dir, f"{case_id}_overlay.png")
        p["json"] = os.path.join(self.out_dir, f"{case_id}.json")
        return p

    def complete(self, case_id: str, path: str | None = None) -> dict | None:
        """The case's JSON record when all its outputs exist and the JSON says ok, else None.

        With ``path`` (the input), the record must also be of an input with that file name: outputs
        left under the same id by another input (e.g. before ids were disambiguated) do not count.
        The folder may differ, so a moved or differently mounted input tree still resumes.
        """
        paths = self.paths(case_id)
        if not all(os.path.isfile(p) for p in paths.values()):
            return None
        rec = read_json(paths["json"])
        if rec is None or rec.get("status") != "ok":
            return None
        if path is not None and _name(str(rec.get("path", ""))) != _name(path):
            return None
        return rec

    def remove_stray_temporaries(self, case_ids: list[str]) -> int:
        """Delete temporary files a killed run left for these cases' outputs; returns how many.

        Lists the folder once (not once per case: a resumed batch may hold many thousands of files) and
        matches the exact temporary names of ``atomic_write``/``atomic_save`` (``.<output>.<random>.tmp``
        or ``.<output>.<random>.<extension>``), so another case's files are never touched.
        """
        try:
            names = [n for n in os.listdir(self.out_dir) if n.startswith(".")]
        except OSError:
            return 0
        ours = {os.path.basename(p) for c in case_ids for p in self.paths(c).values()}
        n = 0
        for name in names:
            if any(_is_temporary_of(base, name) for base in _prefixes(name) if base in ours):
                try:
                    os.unlink(os.path.join(self.out_dir, name))
                    n += 1
                except OSError:
                    pass
        return n


def _prefixes(name: str):
    """The candidate final names X of a hidden file ".X.<rest>" (every dot can end X)."""
    return (name[1:i] for i in range(2, len(name)) if name[i] == ".")


def _is_temporary_of(base: str, name: str) -> bool:
    """``name`` is a temporary of ``base`` from covseg_fast.atomic: ".base.<random>.tmp" or ".base.<random>.<ext>"."""
    rest = name[len(base) + 2:]
    rnd, _, suffix = rest.partition(".")
    return bool(re.fullmatch(r"\w+", rnd)) and suffix in ("tmp", base.split(".", 1)[-1])


def _name(path: str) -> str:
    return os.path.basename(path.rstrip("/\\"))


# screen's own per-case NIfTI outputs, and their temporaries (atomic_save: .<name>.<random>.nii.gz)
OWN_NIFTI = re.compile(r".+_(infection|probabilities)\.nii\.gz|\..+_(infection|probabilities)\.nii\.gz\.\w+\.nii\.gz")


def is_own_output(path: str, out_dir: str) -> bool:
    """True for a mask or probability file (or its temporary) that `covseg screen` writes in ``out_dir``.

    Such files are never screened as inputs, even when ``out_dir`` lies in the input tree.
    """
    if os.path.realpath(os.path.dirname(os.path.abspath(path))) != os.path.realpath(out_dir):
        return False
    return OWN_NIFTI.fullmatch(os.path.basename(path)) is not None


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
