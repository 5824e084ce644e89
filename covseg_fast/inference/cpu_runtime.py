"""How a screening run uses the host: threads for inference, decoding and writing, and glibc's allocator.

Threads. Inference gets ``threads`` intra-op threads (torch and onnxruntime alike; default: every CPU this
process may use); decoding workers and writer threads are single-threaded in their compute (zlib, PNG, numpy)
and each worker process is held to one torch/OpenMP thread, so the pipeline never runs more compute threads
than ``threads`` + workers + writers, and the extra ones mostly wait on I/O.

Allocator. At batch 16 a 512² activation (64 MB) is above glibc's mmap threshold (at most 32 MB), so every
batch maps fresh pages and faults them in again (33 M minor faults, 31 % of the CPU time in the kernel on a
21-volume run). ``tune_allocator`` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap and are reused)
and ``M_TRIM_THRESHOLD`` = 2 GiB - 1, the largest ``mallopt``'s int takes (freed memory stays mapped for the
next batch), the same as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. The process then keeps its high-water mark
instead of returning memory between batches (peak RSS is unchanged). Off with ``COVSEG_MALLOC_TUNING=0``; not
applied when the user set either ``MALLOC_*`` variable, or off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Optional

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt's value is a C int
_tuned: Optional[bool] = None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def tune_allocator() -> bool:
    """Apply the glibc settings above once per process; True when they are in force (see module docstring)."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("COVSEG_MALLOC_TUNING", "1") == "0":
        log.debug("allocator tuning off (COVSEG_MALLOC_TUNING=0)")
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        log.debug("allocator tuning left to the MALLOC_* environment variables")
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    log.debug("glibc allocator: M_MMAP_MAX=0, M_TRIM_THRESHOLD=%d (%s)", TRIM_THRESHOLD_BYTES,
              "ok" if _tuned else "refused")
    return _tuned


def inference_threads(requested: Optional[int]) -> int:
    """Intra-op threads of the model: ``requested`` (``--threads``), else every usable CPU."""
    return max(1, int(requested)) if requested else usable_cpus()


def apply_threads(threads: int) -> None:
    """torch's intra-op threads in this process (onnxruntime gets the same number in its session)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)  # a model batch is one graph: no inter-op parallelism to gain
    except RuntimeError:  # already set, or parallel work has started: keep it
        pass


def single_threaded_worker() -> None:
    """In a decoding worker process: one compute thread (numpy/scipy/torch), the cores belong to inference."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
