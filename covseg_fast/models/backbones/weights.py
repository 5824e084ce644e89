"""Loading user-supplied ImageNet backbone weights: strict, hash-checked on request, never downloaded."""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_backbone_weights(model: nn.Module, path: str, expected_file: str,
                          sha256_prefix: Optional[str] = None, drop_prefixes: Sequence[str] = (),
                          sha256_suffix: Optional[str] = None, expected_size: Optional[int] = None) -> nn.Module:
    """Load a state_dict file into ``model`` with strict key/shape matching.

    Args:
        model: the backbone.
        path: the weights file (a plain state_dict, or a dict holding one under ``"state_dict"``).
        expected_file: the official file name, quoted in the error when ``path`` is missing.
        sha256_prefix, sha256_suffix: when given, the file's sha256 hex digest must start / end with them.
        expected_size: when given (with a hash check), the file must have exactly this many bytes
            (checked first: a cheap, clear message for a truncated download).
        drop_prefixes: keys of the file starting with these are ignored (e.g. a classifier the model lacks).
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: hash mismatch, unreadable file, or keys/shapes that do not fit.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone weights not found at {path!r}. Download {expected_file} yourself (this library never "
            f"downloads) and pass its path, e.g. get_model('refnet', pretrained_backbone='/path/to/{expected_file}') "
            f"or `covseg train --model refnet --config pretrained_backbone=/path/to/{expected_file}`."
        )
    if expected_size is not None and os.path.getsize(path) != expected_size:
        raise ValueError(f"{path}: {os.path.getsize(path):,} bytes, but {expected_file} has {expected_size:,}; the "
                         f"file is truncated or not the official release")
    if sha256_prefix is not None or sha256_suffix is not None:
        digest = sha256_of(path)
        if not (digest.startswith(sha256_prefix or "") and digest.endswith(sha256_suffix or "")):
            want = f"{sha256_prefix or ''}…{sha256_suffix or ''}"
            raise ValueError(f"{path}: sha256 {digest} does not match {want!r} (the official {expected_file}); "
                             f"the file is corrupt or not the official release")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in drop_prefixes)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {type(model).__name__}: {exc}") from exc
    log.info("loaded backbone weights from %s (%d tensors)", path, len(state))
    return model


def init_resnet_style(model: nn.Module) -> None:
    """Init used when not pretrained (Res2Net/torchvision ResNet): conv kaiming-normal (fan_out, relu), BN 1/0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
