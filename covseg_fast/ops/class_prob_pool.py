"""``covseg::class_prob_pool``: CPP pooling of integer labels at several scales in one call.

Backends, in preference order: ``cuda`` (one launch for all nested scales,
csrc/ops/cuda/class_prob_pool.cu; calls beyond its limits, see :func:`cuda_accepts`,
fall back to the reference), ``cpp`` (csrc/ops/class_prob_pool.cpp,
``at::parallel_for``), ``reference`` (ops/reference/class_prob_pool.py).
Labels carry no gradient, so the op has no backward.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _ext
from ._dispatch import Backend, op_backends
from .reference import class_prob_pool as ref

LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)


def _ext_available(device_type: str) -> Optional[str]:
    if not _ext.loaded:
        return _ext.reason
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        if not _ext.has_cuda_kernels():
            return "covseg_fast._C was built without CUDA sources"
        return None if torch.cuda.is_available() else "no CUDA device"
    return f"no kernel for device {device_type}"


def _run_ext(labels, num_classes, scales, ignore_index):
    return list(torch.ops.covseg_ext.class_prob_pool(labels.contiguous(), num_classes, list(scales), ignore_index))


# The CUDA kernel's limits (kMax* in csrc/ops/cuda/class_prob_pool.cu; a test keeps them in sync).
CUDA_MAX_SCALES = 8  # scales per call (a fixed-size kernel argument)
CUDA_MAX_SCALE = 128  # a scale gets a tile of s×s int16 labels in shared memory
CUDA_MAX_CLASSES = 32767  # class ids are int16 in shared memory
CUDA_MAX_BATCH = 65535  # the batch is the grid's y dimension


def cuda_accepts(labels, num_classes, scales, ignore_index=None) -> Optional[str]:
    """None if the CUDA kernel can serve this call, else why not (the call then falls back)."""
    if len(scales) > CUDA_MAX_SCALES:
        return f"{len(scales)} scales > {CUDA_MAX_SCALES} per call on CUDA"
    if max(scales) > CUDA_MAX_SCALE:
        return f"scale {max(scales)} > {CUDA_MAX_SCALE} on CUDA"
    if num_classes > CUDA_MAX_CLASSES:
        return f"num_classes {num_classes} > {CUDA_MAX_CLASSES} on CUDA"
    if labels.shape[0] > CUDA_MAX_BATCH:
        return f"batch {labels.shape[0]} > {CUDA_MAX_BATCH} on CUDA"
    return None


BACKENDS = op_backends("class_prob_pool", ref.class_prob_pool)
BACKENDS.register(
    Backend("cuda", _run_ext, lambda d: _ext_available(d) if d == "cuda" else "CUDA tensors only", cuda_accepts)
)
BACKENDS.register(Backend("cpp", _run_ext, lambda d: _ext_available(d) if d == "cpu" else "CPU tensors only"))


@torch.library.custom_op("covseg::class_prob_pool", mutates_args=())
def _class_prob_pool_op(
    labels: torch.Tensor, num_classes: int, scales: list[int], ignore_index: Optional[int]
) -> list[torch.Tensor]:
    backend = BACKENDS.select(labels.device.type, labels, num_classes, scales, ignore_index)
    return backend.fn(labels, num_classes, scales, ignore_index)


@_class_prob_pool_op.register_fake
def _(labels, num_classes, scales, ignore_index):
    b, h, w = labels.shape
    return [labels.new_empty((b, num_classes, h // s, w // s), dtype=torch.float32) for s in scales]


def _validate(labels: torch.Tensor, num_classes: int, scales: Sequence[int], ignore_index: Optional[int]) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"class_prob_pool: labels must be a tensor, got {type(labels).__name__}")
    if labels.dim() != 3:
        raise ValueError(f"class_prob_pool: labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"class_prob_pool: labels dtype must be uint8, int32 or int64, got {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"class_prob_pool: num_classes must be ≥ 1, got {num_classes}")
    if len(scales) == 0:
        raise ValueError("class_prob_pool: scales is empty")
    h, w = labels.shape[1:]
    for s in scales:
        if not isinstance(s, int) or s < 1:
            raise ValueError(f"class_prob_pool: scales must be positive integers, got {s!r}")
        if s > h or s > w:
            raise ValueError(f"class_prob_pool: scale {s} is larger than the label map {h}×{w}")


def class_prob_pool(
    labels: torch.Tensor, num_classes: int, scales: Sequence[int], ignore_index: Optional[int] = None
) -> list[torch.Tensor]:
    """Class-probability-preserving pooling: ``avg_pool2d(one_hot(labels), s)`` for every s, fused.

    Args:
        labels: (B, H, W) uint8/int32/int64 class map.
        num_classes: K, the number of classes.
        scales: window sizes; output s is (B, K, H // s, W // s) float32 (floored like ``avg_pool2d``).
        ignore_index: a label value that counts for no class (its windows sum to < 1), also when it
            lies in [0, K): class ``ignore_index`` is then all zeros.
    Returns:
        A list with one (B, K, H // s, W // s) float32 tensor per scale.
    Raises:
        ValueError / TypeError: wrong rank, dtype, scales, or a label outside [0, K) that is not ``ignore_index``.
    """
    # Integer-like scales (numpy ints, 0-d tensors) become ints; anything else is left for _validate to reject.
    scales = [int(s) if hasattr(s, "__index__") else s for s in scales]
    _validate(labels, num_classes, scales, ignore_index)
    return list(torch.ops.covseg.class_prob_pool(labels, num_classes, scales, ignore_index))
