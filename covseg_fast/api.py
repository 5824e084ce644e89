"""The Python API: `covseg screen` from a notebook, and one volume segmented in memory.

    import covseg_fast
    report = covseg_fast.screen(["ct/"], "out", checkpoint="model.pt", save_lung_mask=True)
    for case in report.cases:
        print(case.case_id, case.status, case.burden_pct, case.outputs.get("mask"))

    model = covseg_fast.load_model("model.pt")            # None: the shipped demo checkpoint
    seg = covseg_fast.segment_volume(hu, model, spacing=(0.8, 0.8, 5.0))
    seg.mask, seg.probabilities, seg.statistics["burden_pct"]

:func:`screen` runs the very implementation of ``covseg screen`` (:func:`~covseg_fast.inference.screen_run.run_screen`)
with the same options (``ScreenOptions``: the CLI's flags in snake_case) and raises
:class:`~covseg_fast.inference.errors.UsageError` where the CLI exits 2. :func:`segment_volume` feeds one
volume through the same Screener steps (windowing, model, resizing back, threshold or argmax), the same
anatomy and the same restriction to the lungs, and writes nothing. Results are from a research tool, not a
medical device.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Optional, Sequence, Union

import numpy as np

from .inference.errors import UsageError
from .inference.screen_run import (DEMO_VOLUME, ScreenOptions, build_screener, demo_checkpoint, read_model_input,
                                   resolve_device, run_screen)

__all__ = ["DEMO_VOLUME", "CaseResult", "LoadedModel", "ScreenReport", "VolumeSegmentation", "load_model",
           "screen", "segment_volume"]


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One case of a :func:`screen` run (``record``: its whole JSON record; README "Reading the results")."""

    case_id: str
    status: str                       # ok, warning (burden not trustworthy: see warnings) or failed
    path: str                         # the input
    burden_pct: Optional[float]       # infected share of the lungs, percent (None: failed or no lung)
    infected_ml: Optional[float]
    lung_ml: Optional[float]
    warnings: tuple[str, ...]
    reason: str                       # why it failed ("" unless failed)
    outputs: dict[str, str]           # output kind (mask, montage, dicom_seg, json, ...) → absolute path
    record: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ScreenReport:
    """What :func:`screen` did: ``exit_code`` as the CLI's (0 all screened, 1 some failed), every case of the run
    (screened now, complete before with ``resume``, failed) sorted by id, the summary counts and timings."""

    exit_code: int
    cases: list[CaseResult]
    output_dir: str
    summary: dict[str, Any]

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if c.status == "failed"]


def screen(inputs: Union[str, Sequence[str]], output: Optional[str] = None, checkpoint: Optional[str] = None,
           **options: Any) -> ScreenReport:
    """Screen CT volumes as ``covseg screen INPUTS -o OUTPUT --checkpoint CHECKPOINT`` would.

    ``options``: any field of :class:`~covseg_fast.inference.screen_run.ScreenOptions` (the CLI's flags in
    snake_case: ``device="cpu"``, ``window=(-1250, 250)``, ``output_format="both"``, ``save_lung_mask=True``,
    ``progress=False``, ...). ``checkpoint=None`` uses the shipped demo checkpoint.

    Raises:
        TypeError: an unknown option. UsageError: what the CLI reports with exit code 2 (bad options,
        missing inputs, an output folder refused). ReportWriteError: the batch reports could not be written.
    """
    known = {f.name for f in dataclasses.fields(ScreenOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"screen(): unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if checkpoint is None and not options.get("demo"):
        checkpoint = demo_checkpoint()
    opts = ScreenOptions(checkpoint=checkpoint, **options)
    code, res, summary = run_screen([inputs] if isinstance(inputs, str) else list(inputs), output, opts)
    out = os.path.abspath(summary["output_dir"])
    cases = [_case(r, out) for r in summary["rows"]] + [_failure(f) for f in res.failures]
    return ScreenReport(exit_code=code, cases=sorted(cases, key=lambda c: c.case_id), output_dir=out,
                        summary={k: v for k, v in summary.items() if k != "rows"})


def _case(r: dict, out: str) -> CaseResult:
    return CaseResult(case_id=r["case_id"], status=r["status"], path=r.get("path", ""),
                      burden_pct=r.get("burden_pct"), infected_ml=r.get("infected_ml"), lung_ml=r.get("lung_ml"),
                      warnings=tuple(r.get("warnings", ())), reason="",
                      outputs={k: os.path.join(out, v) for k, v in r.get("outputs", {}).items()}, record=dict(r))


def _failure(f: dict) -> CaseResult:
    return CaseResult(case_id=f["case_id"], status="failed", path=f.get("path", ""), burden_pct=None,
                      infected_ml=None, lung_ml=None, warnings=(), reason=f.get("reason", ""), outputs={},
                      record=dict(f))


@dataclasses.dataclass
class LoadedModel:
    """A checkpoint ready to segment: its Screener (model on ``device``, input size, HU window, threshold)."""

    screener: Any
    checkpoint: str

    @property
    def name(self) -> str:
        return str(self.screener.meta.get("model"))

    @property
    def window(self) -> tuple[float, float]:
        return tuple(self.screener.cfg.window)

    @property
    def device(self) -> str:
        return str(self.screener.device)


def load_model(checkpoint: Optional[str] = None, *, device: str = "auto", model: Optional[str] = None,
               window: Optional[tuple[float, float]] = None, input_size=None, threshold: float = 0.5,
               tta: str = "none", backend: str = "torch", batch_size: int = 16) -> LoadedModel:
    """Load ``checkpoint`` (None: the shipped demo checkpoint) as `covseg screen` would with these options.

    Raises:
        UsageError: an unreadable checkpoint, a model other than ``model``, a bad device, window or backend.
    """
    from .inference.screener import ScreenConfig

    checkpoint = checkpoint or demo_checkpoint()
    opts = ScreenOptions(checkpoint=checkpoint, model=model, device=device, window=window, input_size=input_size,
                         threshold=threshold, tta=tta, backend=backend, batch_size=batch_size)
    if not 0.0 < threshold < 1.0:
        raise UsageError(f"threshold must be in (0, 1), got {threshold}")
    payload, model_input = read_model_input(checkpoint, input_size, window)
    cfg = ScreenConfig(out_dir="", window=model_input.window, input_size=model_input.size, threshold=threshold,
                       batch_size=batch_size, device=resolve_device(device), save_probabilities=True)
    cache = os.path.join(tempfile.gettempdir(), "covseg_cache")
    return LoadedModel(build_screener(payload, checkpoint, model_input, opts, cfg, cache), os.path.abspath(checkpoint))


@dataclasses.dataclass
class VolumeSegmentation:
    """One volume segmented by :func:`segment_volume`, on the canonical RAS+ grid of ``volume.data`` (X, Y, Z).

    ``mask``: uint8 infection restricted to the lungs and their margin (binary: 0/1; multi-class: 0, 1.. per
    ``classes``); ``probabilities``: float32 infection probability everywhere; ``lung``: 1 right, 2 left lung;
    ``statistics``: volumes (ml), burdens (%), status and warnings as in a screen record. ``to_input_grid(a)``
    maps any of them back onto the input's own grid.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    lung: np.ndarray
    classes: tuple[str, ...]
    statistics: dict[str, Any]
    volume: Any
    model: str
    device: str

    @property
    def burden_pct(self) -> Optional[float]:
        return self.statistics.get("burden_pct")

    @property
    def warnings(self) -> list[str]:
        return list(self.statistics.get("warnings", []))

    def to_input_grid(self, array: np.ndarray) -> np.ndarray:
        return self.volume.to_source(array)


def segment_volume(volume: Union[str, np.ndarray], model: Optional[LoadedModel] = None, *,
                   spacing: Optional[Sequence[float]] = None,
                   affine: Optional[np.ndarray] = None) -> VolumeSegmentation:
    """Segment one CT volume in memory; nothing is written.

    ``volume``: a NIfTI file, a DICOM series folder, or an (X, Y, Z) array in Hounsfield units whose axes go
    toward patient right, anterior and superior (axial slices ``volume[:, :, k]``) with voxel ``spacing`` in mm,
    or any orientation given by a voxel→RAS ``affine`` (4×4). ``model``: from :func:`load_model` (None: the demo).

    Raises:
        UsageError: an array without spacing or affine, or not 3-D. VolumeError: an unreadable input.
    """
    from .inference.anatomy import compute_anatomy
    from .inference.burden import class_names, restrict
    from .inference.outputs import assessment
    from .io import read_case
    from .io.volume import canonicalize, check_ct_values

    model = model if model is not None else load_model()
    if isinstance(volume, (str, os.PathLike)):
        path = os.fspath(volume)
        vol = read_case(path, "dicom" if os.path.isdir(path) else "nifti")
    else:
        data = np.asarray(volume, dtype=np.float32)
        if data.ndim != 3:
            raise UsageError(f"segment_volume: expected a 3-D (X, Y, Z) array, got shape {data.shape}")
        if affine is None and spacing is None:
            raise UsageError("segment_volume: give spacing=(sx, sy, sz) in mm (or affine=) with an array")
        aff = np.asarray(affine, dtype=np.float64) if affine is not None else np.diag([*map(float, spacing), 1.0])
        warnings = check_ct_values(data, "array")
        vol = canonicalize(data, aff, path="", fmt="array")
        vol.warnings.extend(warnings)
    anatomy = compute_anatomy(vol.data, vol.spacing, vol.voxel_ml)
    classes, prob, k = model.screener.segment(vol.data)
    names = class_names(k)
    infection, excluded = restrict(classes, anatomy)
    stats = assessment(infection, excluded, anatomy, vol, names, list(vol.warnings) + list(anatomy.checks["failed"]))
    return VolumeSegmentation(mask=infection, probabilities=prob, lung=anatomy.lung_labels(), classes=names,
                              statistics=stats, volume=vol, model=model.name, device=model.device)
