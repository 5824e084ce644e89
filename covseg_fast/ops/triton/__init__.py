"""Triton kernels. The only package that imports triton.

``available(device_type)`` says whether Triton kernels can run there: on CUDA
when triton imports and a GPU is present, on CPU only under the interpreter
(``TRITON_INTERPRET=1``), which is how CI tests them.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Optional

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    import_error: Optional[str] = None
except Exception as exc:  # pragma: no cover - depends on the platform
    triton = None
    import_error = f"triton not importable: {type(exc).__name__}: {exc}"
    # Once per process (this module is imported once); a missing GPU is not a reason
    # to warn, so only the failed import does. `covseg info` repeats the reason.
    warnings.warn(f"covseg_fast: Triton kernels unavailable, the PyTorch references serve ({import_error})",
                  stacklevel=2)
    # torch.library.triton_op logs "Triton not available" once per registered op
    # (about 20 lines at import); the warning above already says it once.
    logging.getLogger("torch._library.triton").addFilter(
        lambda record: "Triton not available" not in record.getMessage()
    )


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device_type: str) -> Optional[str]:
    """None if Triton kernels can run on ``device_type``, else why not."""
    if import_error is not None:
        return import_error
    if device_type == "cuda":
        import torch

        if interpreting():
            return "TRITON_INTERPRET=1 is set (the interpreter runs CPU tensors only)"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None
    if device_type == "cpu":
        return None if interpreting() else "Triton runs on CPU only under TRITON_INTERPRET=1"
    return f"no Triton support for device {device_type}"
