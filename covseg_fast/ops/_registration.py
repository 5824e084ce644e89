"""``triton_op``: :func:`torch.library.triton_op` without the compiler-stack import where no Triton kernel can run.

At registration ``torch.library.triton_op`` scans the function's source for the Triton kernels it launches
(``torch._library.triton.get_inner_triton_kernels``), and that scan imports ``torch._inductor`` (1.4 s,
the whole compiler stack) for a code buffer. On a machine where no Triton kernel can run (no CUDA device and
no ``TRITON_INTERPRET=1``) the scan can only find kernels that are never launched, so it is skipped there:
the op is registered by the same ``triton_op`` (same schema, fake, functional decomposition, so
``torch.compile`` and ``torch.export`` trace it exactly as before) with an empty kernel list.
``COVSEG_TRITON_SCAN=1`` forces the scan everywhere.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable

import torch
import torch._library.triton as _torch_triton


def kernels_can_run() -> bool:
    """True where a Triton kernel may launch in this process: a CUDA device, or the CPU interpreter."""
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("COVSEG_TRITON_SCAN") == "1":
        return True
    return torch.cuda.is_available()


@contextlib.contextmanager
def _no_kernel_scan():
    scan = getattr(_torch_triton, "get_inner_triton_kernels", None)
    if scan is None:  # another torch: nothing to skip
        yield
        return
    _torch_triton.get_inner_triton_kernels = lambda fn: []
    try:
        yield
    finally:
        _torch_triton.get_inner_triton_kernels = scan


def triton_op(name: str, *, mutates_args: Iterable[str] | str = ()) -> Callable:
    """Decorator with the signature of ``torch.library.triton_op(name, mutates_args=...)``."""

    def register(fn: Callable):
        if kernels_can_run():
            return torch.library.triton_op(name, fn, mutates_args=mutates_args)
        with _no_kernel_scan():
            return torch.library.triton_op(name, fn, mutates_args=mutates_args)

    return register
