"""Per-case outputs of `covseg screen`: names, completeness, and writing them (masks, JSON, montage)."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from ..atomic import atomic_save
from ..io.volume import Volume
from ..io.writer import save_mask, save_probabilities
from .anatomy import Anatomy
from .burden import case_statistics, restrict
from .montage import DISCLAIMER, write_montage
from .report import read_json, write_json

COMPLETE_STATUSES = ("ok", "warning")  # a case with either status is done: --resume skips it


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """Which files a case produces in ``out_dir``."""

    out_dir: str
    masks: bool = True
    probabilities: bool = False
    montage: bool = True
    unrestricted: bool = False
    lung_mask: bool = False
    label_map: bool = False

    def paths(self, case_id: str) -> dict[str, str]:
        """Output kind → path for ``case_id`` (the JSON is written last and marks completion)."""
        p = {}
        if self.masks:
            p["mask"] = os.path.join(self.out_dir, f"{case_id}_infection.nii.gz")
        if self.unrestricted:
            p["unrestricted_mask"] = os.path.join(self.out_dir, f"{case_id}_infection_unrestricted.nii.gz")
        if self.probabilities:
            p["probabilities"] = os.path.join(self.out_dir, f"{case_id}_probabilities.nii.gz")
        if self.lung_mask:
            p["lung_mask"] = os.path.join(self.out_dir, f"{case_id}_lungmask.nii.gz")
        if self.label_map:
            p["label_map"] = os.path.join(self.out_dir, f"{case_id}_labelmap.nii.gz")
        if self.montage:
            p["montage"] = os.path.join(self.out_dir, f"{case_id}_overlay.png")
        p["json"] = os.path.join(self.out_dir, f"{case_id}.json")
        return p

    def complete(self, case_id: str, path: str | None = None) -> dict | None:
        """The case's JSON record when all its outputs exist and the JSON's status is ok or warning, else None.

        With ``path`` (the input), the record must also be of an input with that file name: outputs
        left under the same id by another input (e.g. before ids were disambiguated) do not count.
        The folder may differ, so a moved or differently mounted input tree still resumes.
        """
        paths = self.paths(case_id)
        if not all(os.path.isfile(p) for p in paths.values()):
            return None
        rec = read_json(paths["json"])
        if rec is None or rec.get("status") not in COMPLETE_STATUSES:
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
_KINDS = "infection|infection_unrestricted|probabilities|lungmask|labelmap"
OWN_NIFTI = re.compile(rf".+_({_KINDS})\.nii\.gz|\..+_({_KINDS})\.nii\.gz\.\w+\.nii\.gz")


def is_own_output(path: str, out_dir: str) -> bool:
    """True for a mask, probability, lung-mask or label-map file (or its temporary) that `covseg screen` writes in
    ``out_dir``.

    Such files are never screened as inputs, even when ``out_dir`` lies in the input tree.
    """
    if os.path.realpath(os.path.dirname(os.path.abspath(path))) != os.path.realpath(out_dir):
        return False
    return OWN_NIFTI.fullmatch(os.path.basename(path)) is not None


def label_map(infection: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8: 0 background, 1 right lung, 2 left lung, 2 + c where infection class c (binary: 3)."""
    out = lung.copy()
    found = infection > 0
    out[found] = 2 + infection[found]
    return out


def write_case(plan: OutputPlan, case_id: str, volume: Volume, classes: np.ndarray, anatomy: Anatomy,
               prob: np.ndarray | None, record: dict, window: tuple[float, float], names: tuple[str, ...] = ()) -> dict:
    """Write all outputs of one case (JSON last) and return the completed record.

    ``classes``: the model's (X, Y, Z) uint8 classes (binary: 0/1) on the canonical grid, unrestricted; the
    infection mask written and every volume reported are restricted to the lungs and their margin
    (:mod:`.burden`). The status is ``warning`` when the volume has warnings or the lung checks failed.
    """
    paths = plan.paths(case_id)
    src = os.path.realpath(volume.path)
    for p in paths.values():
        if os.path.realpath(p) == src:
            raise RuntimeError(f"output {p} would overwrite the input")
    infection, excluded = restrict(classes, anatomy)
    if "unrestricted_mask" in paths:
        save_mask(paths["unrestricted_mask"], classes, volume)
    if "mask" in paths:
        save_mask(paths["mask"], infection, volume)
    if "probabilities" in paths and prob is not None:
        save_probabilities(paths["probabilities"], prob, volume)
    lung = anatomy.lung_labels()
    if "lung_mask" in paths:
        save_mask(paths["lung_mask"], lung, volume)
    if "label_map" in paths:
        save_mask(paths["label_map"], label_map(infection, lung), volume)
    checks = anatomy.checks
    warnings = list(record.get("warnings", [])) + list(checks["failed"])
    record = dict(record, status="warning" if warnings else "ok", **case_statistics(
        infection, anatomy, volume.voxel_ml, excluded, names))
    record.update(burden_trustworthy=not warnings, lung_checks_passed=bool(checks["passed"]), lung_checks=checks,
                  warnings=warnings, note=DISCLAIMER)
    if "montage" in paths:
        write_montage(paths["montage"], volume, infection, lung, window, case_id=case_id,
                      model=str(record.get("model", "")), names=names, trusted=not warnings)
    record["outputs"] = {k: os.path.basename(v) for k, v in paths.items()}
    write_json(paths["json"], record)
    return record
