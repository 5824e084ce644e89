"""covseg_fast: COVID-19 lung infection segmentation in CT, with fused kernels.

``import covseg_fast`` is light: it does not import torch, so ``covseg --help`` and argument errors answer at
once. The custom ops (``torch.ops.covseg.*``) are registered when ``covseg_fast.ops`` is imported: by any
module that uses them (``covseg_fast.nn``, ``models``, ...), or on first use of ``covseg_fast.ops`` /
``covseg_fast.use_backend``. Importing never fails for a missing compiled library or Triton: it warns once
and the pure-PyTorch references serve (``covseg info`` says which backend serves each op and why).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The Python API (covseg_fast.api), imported on first use: screen(), load_model(), segment_volume().
_API = ("screen", "load_model", "segment_volume", "DEMO_VOLUME", "ScreenReport", "CaseResult", "LoadedModel",
        "VolumeSegmentation")

__all__ = ["__version__", "ops", "use_backend", *_API]


def __getattr__(name: str):
    # PEP 562: the ops (and torch) load on first use, not at package import
    if name == "ops":
        return importlib.import_module(".ops", __name__)
    if name == "use_backend":
        return importlib.import_module(".ops", __name__).use_backend
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
