"""What a trained model is fed: its input size and HU window, read from its checkpoint.

A model scores best at the size it was trained at: an MSA-UNet trained at 128 px and fed at its
registered default of 256 px lost 0.05 Dice on an unseen test split. Every consumer of a checkpoint
(`covseg evaluate`, `screen`, `export`, `bench`, the TensorRT engine) resolves its input here, so they
all agree with `covseg crossval`, which scores folds at their training size:

- size: ``--input-size`` if given, else the training size recorded in the checkpoint
  (``train.config.input_size``, written by `covseg train`), else the model's registered default;
- window (CT volumes only: HU → [0, 1]): ``--window`` if given, else the window recorded in the
  checkpoint (``input.window``: `covseg train --volumes`, or ``--window`` given with slice data to say
  which HU window the slice images correspond to), else the lung window -1250 … 250.

- plane: how the training slices' rows and columns run. ``radiological`` (rows anterior → posterior,
  columns patient right → left: the DICOM display convention, what `covseg screen` and the volume
  datasets produce) or ``transposed`` (rows right → left, columns anterior → posterior: how the
  COVID-SemiSeg slices are stored, docs/intensity_window.md). Recorded as ``input.plane`` (`covseg
  train --data ... --slice-plane`); a model trained on transposed slices is fed transposed slices
  (:func:`plane_adapter`), since a CNN trained in one orientation does not see the other one the same.

Each value comes with where it came from, and reports record both.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..windows import LUNG_WINDOW
from .registry import MODELS, CheckpointError, get_spec


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """The (H, W) a model is fed and the HU window mapped to [0, 1], each with its source."""

    size: tuple[int, int]
    size_source: str
    window: tuple[float, float]
    window_source: str
    plane: str = "radiological"

    def as_record(self) -> dict[str, Any]:
        """Fields for reports: input_size_px, input_size_source, window_hu, window_source, slice_plane."""
        return {"input_size_px": list(self.size), "input_size_source": self.size_source,
                "window_hu": list(self.window), "window_source": self.window_source, "slice_plane": self.plane}


def trained_size(payload: dict, path: str = "checkpoint") -> Optional[tuple[int, int]]:
    """The square training size recorded by `covseg train` (``train.config.input_size``), or None.

    Raises:
        CheckpointError: a recorded size that is not a positive integer.
    """
    config = (payload.get("train") or {}).get("config") or {}
    size = config.get("input_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CheckpointError(f"{path}: recorded training input_size {size!r} is not a positive integer")
    return size, size


def recorded_window(payload: dict, path: str = "checkpoint") -> Optional[tuple[float, float]]:
    """The HU window recorded in the checkpoint's ``input`` entry, or None.

    Raises:
        CheckpointError: a malformed window.
    """
    window = (payload.get("input") or {}).get("window")
    if window is None:
        return None
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: recorded HU window {window!r} is not [low, high]") from exc
    if not high > low:
        raise CheckpointError(f"{path}: recorded HU window {window!r} has high ≤ low")
    return low, high


PLANES = ("radiological", "transposed")


def recorded_plane(payload: dict, path: str = "checkpoint") -> str:
    """The slice plane recorded in the checkpoint's ``input`` entry (default radiological).

    Raises:
        CheckpointError: an unknown plane.
    """
    plane = (payload.get("input") or {}).get("plane", "radiological")
    if plane not in PLANES:
        raise CheckpointError(f"{path}: recorded slice plane {plane!r} is not one of {', '.join(PLANES)}")
    return plane


class Transposed(nn.Module):
    """Feed ``model`` the transposed slices (H ↔ W) and transpose its logits back."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for attr in ("covseg_name", "covseg_config"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.transpose(-2, -1))
        if isinstance(out, dict):
            out = out["out"]
        return out.transpose(-2, -1)


def plane_adapter(model: nn.Module, plane: str) -> nn.Module:
    """``model`` for radiological slices, :class:`Transposed` for a model trained on transposed ones."""
    if plane not in PLANES:
        raise ValueError(f"unknown slice plane {plane!r}; choose one of {', '.join(PLANES)}")
    return model if plane == "radiological" else Transposed(model)


def resolve_input(payload: dict, path: str = "checkpoint", size: Optional[int | Sequence[int]] = None,
                  window: Optional[Sequence[float]] = None) -> ModelInput:
    """The :class:`ModelInput` of checkpoint ``payload`` (see the module docstring), with overrides.

    ``size``: one int (square) or (H, W) from ``--input-size``; ``window``: (low, high) from ``--window``.

    Raises:
        CheckpointError: malformed recorded values.
        ValueError: an override that is not positive / not a multiple of the model's size multiple.
    """
    if payload.get("model") not in MODELS:
        raise CheckpointError(f"{path}: unknown model {payload.get('model')!r} in the checkpoint")
    spec = get_spec(payload["model"])
    if size is not None:
        hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(hw) != 2 or min(hw) < 1 or any(s % spec.size_multiple for s in hw):
            raise ValueError(f"--input-size {size}: need positive multiples of {spec.size_multiple} for "
                             f"{payload['model']}")
        size_hw, size_source = hw, "--input-size"
    else:
        recorded = trained_size(payload, path)
        if recorded is not None:
            size_hw, size_source = recorded, "training size recorded in the checkpoint"
        else:
            size_hw, size_source = tuple(spec.input_size), "model default (no training size in the checkpoint)"
    if window is not None:
        win, window_source = (float(window[0]), float(window[1])), "--window"
    else:
        recorded_win = recorded_window(payload, path)
        if recorded_win is not None:
            win, window_source = recorded_win, "recorded in the checkpoint"
        else:
            win, window_source = LUNG_WINDOW, "lung window default (none recorded in the checkpoint)"
    return ModelInput(size=size_hw, size_source=size_source, window=win, window_source=window_source,
                      plane=recorded_plane(payload, path))
