"""Model registry and checkpoint format shared by train, evaluate, screen and export.

A model family registers a :class:`ModelSpec`: its builder, its training
criterion and how its input is prepared. ``get_model(name, **config)`` builds
it and remembers name and config on the module, so ``save_checkpoint`` can
store them and ``load_model(path)`` rebuilds the right network.

Contract every registered model follows:
- ``model.eval(); model(x)`` returns logits (B, num_classes_out, H, W) at the input size;
- ``model.train(); model(x)`` returns a dict with at least ``"out"`` (those logits) and the
  side outputs its criterion needs;
- ``criterion(outputs, batch) -> (loss, {part: float})`` with ``batch`` a dict holding
  ``"mask"`` (B, 1, H, W) float in [0, 1] (soft for pseudo-labels), optionally ``"labels"``
  (B, H, W) int64 class map and ``"edge"`` (B, 1, H, W).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..atomic import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build, train and feed one model family.

    ``in_channels`` 1 or 3 (grey repeated); ``input_size`` the training/inference size (H, W);
    ``normalization`` "imagenet" (mean/std per channel) or "unit" (x in [0, 1] as is);
    ``size_multiple``: H and W must be multiples of it.
    """

    name: str
    builder: Callable[..., nn.Module]
    criterion: Callable[..., Callable]
    in_channels: int = 3
    input_size: tuple[int, int] = (352, 352)
    normalization: str = "imagenet"
    size_multiple: int = 32
    description: str = ""


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def get_model(name: str, **config: Any) -> nn.Module:
    """Build model ``name`` with ``config``; the module remembers both for checkpoints."""
    model = get_spec(name).builder(**config)
    model.covseg_name = name
    model.covseg_config = dict(config)
    return model


def get_criterion(name: str, **config: Any) -> Callable:
    """The training loss of model ``name``: ``criterion(outputs, batch) -> (loss, parts)``."""
    return get_spec(name).criterion(**config)


def prepare_input(grey: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(B, 1, H, W) grey slices in [0, 1] → the model's input (channels and normalisation)."""
    if grey.dim() != 4 or grey.shape[1] != 1:
        raise ValueError(f"prepare_input: expected (B, 1, H, W) grey slices, got {tuple(grey.shape)}")
    x = grey.expand(-1, spec.in_channels, -1, -1)
    if spec.normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN[: spec.in_channels] if spec.in_channels == 3 else (0.449,),
                            device=x.device, dtype=x.dtype)
        std = torch.tensor(IMAGENET_STD[: spec.in_channels] if spec.in_channels == 3 else (0.226,),
                           device=x.device, dtype=x.dtype)
        x = (x - mean[:, None, None]) / std[:, None, None]
    elif spec.normalization != "unit":
        raise ValueError(f"unknown normalization {spec.normalization!r}")
    return x.contiguous()


def save_checkpoint(path: str, model: nn.Module, extra: Optional[dict] = None) -> None:
    """Write {format, model name, config, state_dict, extra} atomically."""
    from .. import __version__

    name = getattr(model, "covseg_name", None)
    if name is None:
        raise ValueError("save_checkpoint: model was not built with get_model (no name/config recorded)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "model": name, "config": model.covseg_config,
               "state_dict": state, "covseg_version": __version__, **(extra or {})}
    with atomic_write(path) as fh:
        torch.save(payload, fh)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


EXPECTED = ("expected a checkpoint written by `covseg train` (a torch file holding the model name, its config "
            "and a state_dict of tensors)")


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """The payload of checkpoint ``path``, loaded with ``weights_only=True`` (tensors and plain data only).

    Raises:
        CheckpointError: one line naming the file, what is wrong and what was expected; never torch's
            multi-line advice (a checkpoint that needs ``weights_only=False`` is refused, not loaded).
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is not a regular file; {EXPECTED}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch files are zip archives (legacy: a pickle)
        raise CheckpointError(f"{path} is not a torch file ({'empty' if not head else 'unknown content'}); {EXPECTED}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain data (e.g. a pickled "
                              f"model); they are never loaded, for safety; {EXPECTED}") from None
    except Exception as exc:
        first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", " ".join(str(exc).split("\n")[0].split()))
        first = re.split(r"\.\s", first)[0][:160]  # torch's first sentence, not its internal details
        raise CheckpointError(f"{path}: damaged or not a torch file ({type(exc).__name__}: {first}); "
                              f"{EXPECTED}") from None
    if not isinstance(payload, dict) or "model" not in payload or "state_dict" not in payload:
        raise CheckpointError(f"{path}: not a covseg checkpoint (no model name / state_dict); {EXPECTED}")
    return payload


def load_model(path: str, map_location: str | torch.device = "cpu", expect: Optional[str] = None) -> nn.Module:
    """Rebuild the model recorded in checkpoint ``path`` and load its weights (strict).

    Raises:
        CheckpointError: missing or corrupt file, unknown model, a different model than ``expect``,
            or weights that do not fit the recorded configuration.
    """
    return model_from_checkpoint(read_checkpoint(path, map_location), path, expect)


def model_from_checkpoint(payload: dict, path: str = "checkpoint", expect: Optional[str] = None) -> nn.Module:
    """The model of an already read checkpoint ``payload`` (:func:`read_checkpoint`), weights loaded (strict).

    Consumers that also need the checkpoint's input settings (:mod:`.model_input`) read the file once and
    call this. Raises CheckpointError as :func:`load_model`.
    """
    if expect is not None and expect not in MODELS:
        raise CheckpointError(f"unknown model {expect!r}; known models: {', '.join(sorted(MODELS))}")
    name = payload["model"]
    if expect is not None and name != expect:
        raise CheckpointError(f"{path}: checkpoint holds model {name!r}, not {expect!r}")
    if not isinstance(name, str) or name not in MODELS:
        raise CheckpointError(f"{path}: unknown model {name!r} in the checkpoint; known models: "
                              f"{', '.join(sorted(MODELS))}")
    config = payload.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"{path}: the model config in the checkpoint is not a dict of named settings "
                              f"(got {type(config).__name__})")
    try:
        model = get_model(name, **config)
    except (TypeError, ValueError, KeyError) as exc:  # unknown or invalid settings for this model's builder
        msg = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())
        raise CheckpointError(f"{path}: config does not fit model {name!r} ({type(exc).__name__}: {msg})") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {exc}") from exc
    return model
