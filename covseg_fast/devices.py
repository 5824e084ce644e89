"""Which device a subcommand runs on: one syntax and one default (``auto``) for every subcommand."""
from __future__ import annotations

import os
import re

DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(text: str) -> str:
    """``text`` if it is auto, cpu, cuda or cuda:N (no torch needed); else ValueError naming the choices."""
    if not DEVICES.fullmatch(text or ""):
        raise ValueError(f"--device {text!r}: expected auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return text


def resolve_device(text: str) -> str:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` (under torchrun: the local rank's GPU) or
    ``cuda:N`` → a torch device string. Raises ValueError for a bad or unavailable device."""
    import torch

    local = os.environ.get("LOCAL_RANK", "")
    check_device(text)
    if text == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        text = "cuda"
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"--device {text!r}: {exc}") from None
    if dev.type != "cuda":
        return text
    if not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine")
    # plain "cuda" under torchrun: one GPU per local rank (an explicit cuda:N is taken as given)
    try:
        index = dev.index if dev.index is not None else int(local or 0)
    except ValueError:
        raise ValueError(f"--device {text}: LOCAL_RANK={local!r} is not a GPU index") from None
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}{f' (LOCAL_RANK={local})' if dev.index is None and local else ''}: "
                         f"GPU {index} does not exist; this machine has {torch.cuda.device_count()}")
    return f"cuda:{index}"
