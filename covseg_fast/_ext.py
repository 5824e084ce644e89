"""Loads the compiled library ``covseg_fast._C`` once; never raises.

The library registers C++/CUDA kernels under the private op namespace
``covseg_ext``; the public ops (``covseg::*``) are defined in Python so they
exist even without it. When loading fails the reason is kept for
``covseg info`` and a single warning is issued.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import warnings
from typing import Optional

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_log = logging.getLogger(__name__)

loaded: bool = False
reason: Optional[str] = None
library_path: Optional[str] = None


def build_config() -> dict:
    """The configuration `setup.py` resolved at build time (empty if unknown)."""
    path = os.path.join(_HERE, "_build_config.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _load() -> None:
    global loaded, reason, library_path
    if os.environ.get("COVSEG_DISABLE_EXT") == "1":
        reason = "disabled by COVSEG_DISABLE_EXT=1"
        return
    candidates = sorted(glob.glob(os.path.join(_HERE, "_C*.so")) + glob.glob(os.path.join(_HERE, "_C*.pyd")))
    if not candidates:
        config = build_config()
        if config.get("no_ext"):
            reason = "pure-Python install (built with COVSEG_NO_EXT=1)"
        else:
            reason = "compiled library covseg_fast._C not found (install with `pip install --no-build-isolation .`)"
        return
    try:
        torch.ops.load_library(candidates[0])
    except Exception as exc:  # a stale build against another torch raises here
        reason = f"could not load {os.path.basename(candidates[0])}: {exc}"
        return
    loaded, library_path = True, candidates[0]


def has_cuda_kernels() -> bool:
    """True when the loaded library was built with its CUDA sources."""
    return loaded and bool(build_config().get("cuda"))


_load()
if not loaded and not build_config().get("no_ext"):
    warnings.warn(f"covseg_fast: C++/CUDA kernels unavailable, the PyTorch reference serves ({reason})", stacklevel=2)
