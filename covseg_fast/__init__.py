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

__all__ = ["__version__", "ops", "use_backend"]
