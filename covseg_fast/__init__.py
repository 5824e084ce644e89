"""covseg_fast: COVID-19 lung infection segmentation in CT, with fused kernels.

Importing never fails for a missing compiled library or Triton: it warns once
and the pure-PyTorch references serve (``covseg info`` says which backend
serves each op and why).
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import _ext  # noqa: F401  (loads covseg_fast._C once, or records why not)
from . import ops  # noqa: F401,E402  (registers the covseg:: custom ops)
from .ops._dispatch import use_backend  # noqa: E402

# The Python API (covseg_fast.api), imported on first use: screen(), load_model(), segment_volume().
_API = ("screen", "load_model", "segment_volume", "DEMO_VOLUME", "ScreenReport", "CaseResult", "LoadedModel",
        "VolumeSegmentation")

__all__ = ["__version__", "ops", "use_backend", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'covseg_fast' has no attribute {name!r}")
