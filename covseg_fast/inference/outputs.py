"""Per-case outputs of `covseg screen`: the infection restricted to the lungs, the optional masks, the
statistics, the montage and the JSON record of one case.

Which files a case has (:class:`~.output_folder.OutputPlan`), and everything else about the output folder,
lives in :mod:`.output_folder`.
"""
from __future__ import annotations

import os

import numpy as np

from ..io.volume import Volume
from ..io.writer import save_mask, save_probabilities
from .anatomy import Anatomy
from .burden import case_statistics, restrict
from .dicom_seg import write_case_seg
from .montage import DISCLAIMER, write_montage
from .output_folder import OutputPlan
from .report import write_json


def label_map(infection: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8: 0 background, 1 right lung, 2 left lung, 2 + c where infection class c (binary: 3)."""
    out = lung.copy()
    found = infection > 0
    out[found] = 2 + infection[found]
    return out


def assessment(infection: np.ndarray, excluded: int, anatomy: Anatomy, volume: Volume, names: tuple[str, ...],
               warnings: list[str]) -> dict:
    """What a case's record says about its result: status (``warning`` when there are ``warnings``: the volume's
    and the failed lung checks), the volumes and burdens (:func:`~.burden.case_statistics`), whether the burden
    can be trusted, the lung checks and the research-use note."""
    checks = anatomy.checks
    return {"status": "warning" if warnings else "ok",
            **case_statistics(infection, anatomy, volume.voxel_ml, excluded, names),
            "burden_trustworthy": not warnings, "lung_checks_passed": bool(checks["passed"]), "lung_checks": checks,
            "warnings": list(warnings), "note": DISCLAIMER}


def write_case(plan: OutputPlan, case_id: str, volume: Volume, classes: np.ndarray, anatomy: Anatomy,
               prob: np.ndarray | None, record: dict, window: tuple[float, float], names: tuple[str, ...] = ()) -> dict:
    """Write all outputs of one case (JSON last) and return the completed record.

    ``classes``: the model's (X, Y, Z) uint8 classes (binary: 0/1) on the canonical grid, unrestricted; the
    infection mask written and every volume reported are restricted to the lungs and their margin
    (:mod:`.burden`). The status is ``warning`` when the volume has warnings or the lung checks failed.
    """
    paths = plan.paths(case_id, volume.fmt == "dicom")
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
    if "dicom_seg" in paths:  # the infection as in the NIfTI mask; the lungs when their mask is asked for
        write_case_seg(paths["dicom_seg"], volume, infection, lung if plan.lung_mask else None, names, record)
    warnings = list(record.get("warnings", [])) + list(anatomy.checks["failed"])
    record = dict(record, **assessment(infection, excluded, anatomy, volume, names, warnings))
    if "montage" in paths:
        write_montage(paths["montage"], volume, infection, lung, window, case_id=case_id,
                      model=str(record.get("model", "")), names=names, trusted=not warnings)
    record["outputs"] = {k: os.path.basename(v) for k, v in paths.items()}
    write_json(paths["json"], record)
    return record
