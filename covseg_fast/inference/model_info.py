"""What the reports say about the model: name, parameter count, checkpoint, and the checkpoint's provenance."""
from __future__ import annotations

import os

from torch import nn

from ..models.registry import read_checkpoint


def model_record(model: nn.Module, checkpoint: str, payload: dict | None = None) -> dict:
    """Fields of every record: ``model``, ``model_parameters``, ``checkpoint``, ``training_data`` and ``licence``
    (the checkpoint's ``provenance`` ``data`` and ``licence``; None when it has none) and ``provenance`` (the
    whole dict: command, commit, date, validation scores, ...; ``{}`` when absent). ``payload``: the checkpoint
    already read (else it is read here)."""
    provenance = (payload if payload is not None else read_checkpoint(checkpoint)).get("provenance")
    if not isinstance(provenance, dict):
        provenance = {} if provenance is None else {"text": str(provenance)}
    return {"model": getattr(model, "covseg_name", type(model).__name__),
            "model_parameters": int(sum(p.numel() for p in model.parameters())),
            "checkpoint": os.path.abspath(checkpoint),
            "training_data": provenance.get("data"), "licence": provenance.get("licence"),
            "provenance": provenance}
