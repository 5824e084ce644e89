"""``covseg::cpp_kl_loss``: CPP pooling of labels + log-softmax of aux logits + KL, fused per scale.

    loss = (1/(B·h·w)) · Σ t·(log t − log softmax(z)),   t = CPP_s(labels),   0·log 0 := 0

(MODELS.md §3.4, §11 A5; spec in ops/reference/cpp_kl_loss.py). Backends, in preference order:
``triton`` (CUDA tensors; CPU tensors under TRITON_INTERPRET=1), ``reference``. The op is a
``torch.library.triton_op`` so torch.compile / export see inside; its backward is the separate op
``covseg::_cpp_kl_loss_backward`` (gradient to the logits only; labels carry none).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from ._registration import triton_op

from . import triton as triton_backend
from ._dispatch import Backend, op_backends
from .reference import cpp_kl_loss as ref
from .reference.class_prob_pool import invalid_label_error

LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)
LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _target(labels: torch.Tensor, num_classes: int, scale: int, ignore_index: Optional[int], dtype) -> torch.Tensor:
    """CPP_s(labels) without the data-dependent label check (fake-tensor traceable); invalid labels count nowhere."""
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1, 1)
    lab = labels.unsqueeze(1).long()
    hit = lab == classes
    if ignore_index is not None:
        hit = hit & (lab != ignore_index)
    return F.avg_pool2d(hit.to(dtype), kernel_size=scale, stride=scale)


def _reference_forward(logits, labels, scale, ignore_index):
    t = _target(labels, logits.shape[1], scale, ignore_index, ref.compute_dtype(logits.dtype))
    return ref.cpp_kl_from_probs(logits, t)


def _reference_backward(grad, logits, labels, scale, ignore_index):
    dtype = ref.compute_dtype(logits.dtype)
    t = _target(labels, logits.shape[1], scale, ignore_index, dtype)
    b, _, h, w = logits.shape
    q = torch.softmax(logits.to(dtype), dim=1)
    return ((q * t.sum(1, keepdim=True) - t) * (grad.to(dtype) / max(b * h * w, 1))).to(logits.dtype)


def _triton_forward(logits, labels, scale, ignore_index):
    from .triton.cpp_kl_loss import cpp_kl_forward

    return cpp_kl_forward(logits, labels, scale, ignore_index)


def _triton_backward(grad, logits, labels, scale, ignore_index):
    from .triton.cpp_kl_loss import cpp_kl_backward

    return cpp_kl_backward(grad, logits, labels, scale, ignore_index)


def _triton_accepts(logits, labels, scale, ignore_index):
    if scale * scale > 4096:
        return f"window {scale}×{scale} larger than the kernel's 4096-slot tile"
    if logits.shape[1] > 64:
        return f"{logits.shape[1]} classes; the kernel handles at most 64"
    return None


BACKENDS = op_backends("cpp_kl_loss", _reference_forward)
BACKENDS.register(Backend("triton", _triton_forward, triton_backend.available, _triton_accepts))
BACKWARD_BACKENDS = {"triton": _triton_backward, "reference": _reference_backward}


@triton_op("covseg::cpp_kl_loss", mutates_args=())
def _cpp_kl_loss_op(logits: torch.Tensor, labels: torch.Tensor, scale: int, ignore_index: Optional[int]) -> torch.Tensor:
    backend = BACKENDS.select(logits.device.type, logits, labels, scale, ignore_index)
    return backend.fn(logits, labels, scale, ignore_index)


@triton_op("covseg::_cpp_kl_loss_backward", mutates_args=())
def _cpp_kl_loss_backward_op(grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, scale: int,
                             ignore_index: Optional[int]) -> torch.Tensor:
    backend = BACKENDS.select(logits.device.type, logits, labels, scale, ignore_index)
    return BACKWARD_BACKENDS[backend.name](grad, logits, labels, scale, ignore_index)


# Explicit shape-only fakes: the traced triton_op body would run the Triton *interpreter* on fake tensors
# under TRITON_INTERPRET=1 (on CUDA, wrap_triton traces fine either way).
@_cpp_kl_loss_op.register_fake
def _(logits, labels, scale, ignore_index):
    return logits.new_empty((), dtype=ref.compute_dtype(logits.dtype))


@_cpp_kl_loss_backward_op.register_fake
def _(grad, logits, labels, scale, ignore_index):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, labels, scale, ignore_index = inputs
    ctx.save_for_backward(logits, labels)
    ctx.scale, ctx.ignore_index = scale, ignore_index


def _backward(ctx, grad):
    logits, labels = ctx.saved_tensors
    dz = torch.ops.covseg._cpp_kl_loss_backward(grad, logits, labels, ctx.scale, ctx.ignore_index)
    return dz, None, None, None


_cpp_kl_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(logits, labels, scale, ignore_index, check_labels: bool) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("cpp_kl_loss: logits and labels must be tensors")
    if logits.dim() != 4:
        raise ValueError(f"cpp_kl_loss: logits must be (B, K, h, w), got shape {tuple(logits.shape)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"cpp_kl_loss: logits dtype must be floating (fp16/bf16/fp32/fp64), got {logits.dtype}")
    if labels.dim() != 3:
        raise ValueError(f"cpp_kl_loss: labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"cpp_kl_loss: labels dtype must be uint8, int32 or int64, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"cpp_kl_loss: labels on {labels.device} but logits on {logits.device}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"cpp_kl_loss: scale must be a positive integer, got {scale!r}")
    b, k, h, w = logits.shape
    if k < 1:
        raise ValueError("cpp_kl_loss: logits have no class channel (K = 0)")
    if labels.shape[0] != b or labels.shape[1] // scale != h or labels.shape[2] // scale != w:
        raise ValueError(
            f"cpp_kl_loss: labels {tuple(labels.shape)} pooled by {scale} give "
            f"({labels.shape[0]}, {labels.shape[1] // scale}, {labels.shape[2] // scale}), "
            f"which does not match logits (B, h, w) = ({b}, {h}, {w})")
    if check_labels:
        message = invalid_label_error(labels, k, ignore_index)
        if message is not None:
            raise ValueError(message.replace("class_prob_pool", "cpp_kl_loss"))


def cpp_kl_loss(logits: torch.Tensor, labels: torch.Tensor, scale: int, ignore_index: Optional[int] = None,
                check_labels: bool = True) -> torch.Tensor:
    """Per-pixel-mean KL(CPP_scale(labels) ‖ softmax(logits)), fused (differentiable w.r.t. logits).

    Args:
        logits: (B, K, h, w) aux logits, fp16/bf16/fp32/fp64.
        labels: (B, H, W) uint8/int32/int64 class map with H // scale = h, W // scale = w.
        scale: CPP window s.
        ignore_index: a label value that counts for no class.
        check_labels: verify every label is in [0, K) or ``ignore_index`` (one device sync);
            pass False when the caller has checked (unchecked invalid labels count for no class).
    Returns:
        0-dim tensor, float32 (float64 for float64 logits).
    Raises:
        ValueError / TypeError: wrong ranks, dtypes, devices, sizes, scale, or an invalid label.
    """
    scale = int(scale) if hasattr(scale, "__index__") else scale
    _validate(logits, labels, scale, ignore_index, check_labels)
    return torch.ops.covseg.cpp_kl_loss(logits, labels, scale, ignore_index)
