"""The environment knobs of the ops (``COVSEG_*``), read where no graph is being traced.

- ``COVSEG_BACKEND``: force one backend for every op (``_dispatch.py``);
- ``COVSEG_STRIP_CONV_SCHEDULE``: ``single`` or ``split`` (``triton/strip_conv.py``);
- ``COVSEG_CHANNEL_ATTENTION_PATH``: ``auto``, ``gram`` or ``flash`` (``triton/attention_cost.py``).

The ops consult them inside their ``torch.library`` bodies, which ``torch.compile`` traces. So that a
traced graph never reads ``os.environ`` (older Dynamo versions graph-break on it; a value read there is
baked in unguarded), :func:`value` reads the environment only when nothing is being compiled and keeps
what it read; while compiling it answers with that snapshot. Eager calls therefore follow the environment
as it is at each call, and a compiled graph keeps the values of the last eager read (or of import time):
set the knobs before the first compiled call, or call :func:`refresh` after changing them.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

KNOBS = ("COVSEG_BACKEND", "COVSEG_STRIP_CONV_SCHEDULE", "COVSEG_CHANNEL_ATTENTION_PATH")
_snapshot: dict[str, Optional[str]] = {}


def refresh() -> dict[str, Optional[str]]:
    """Re-read every knob from the environment (call it outside compiled code); returns the values."""
    _snapshot.update({name: os.environ.get(name) for name in KNOBS})
    return dict(_snapshot)


def value(name: str) -> Optional[str]:
    """The knob's string (None when unset): from the environment, or the snapshot while compiling."""
    if name not in KNOBS:
        raise KeyError(f"unknown knob {name!r}; known: {', '.join(KNOBS)}")
    if not torch.compiler.is_compiling():
        _snapshot[name] = os.environ.get(name)
    return _snapshot.get(name)


refresh()
