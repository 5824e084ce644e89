"""Switch every module of a model to its pure-PyTorch reference path (the export path).

Exported graphs must hold standard ops only, so fused custom ops are replaced by
the reference compositions they are tested against.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def reference_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Set ``fused = False`` on every submodule that has the flag; restore on exit."""
    saved = [(m, m.fused) for m in model.modules() if isinstance(getattr(m, "fused", None), bool)]
    try:
        for module, _ in saved:
            module.fused = False
        yield model
    finally:
        for module, value in saved:
            module.fused = value
