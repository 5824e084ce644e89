"""The progress bar of `covseg screen` (tqdm, when installed) and log lines that do not break it."""
from __future__ import annotations

import contextlib


def progress_bar(total: int, enabled: bool):
    """A tqdm bar over ``total`` volumes, or None (disabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="vol", desc="screening", dynamic_ncols=True)


def logs_through(bar):
    """While the progress bar shows, route console log lines through ``tqdm.write`` (they do not break it)."""
    if bar is None:
        return contextlib.nullcontext()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        return contextlib.nullcontext()
    return logging_redirect_tqdm()
