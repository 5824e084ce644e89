"""``covseg::structure_loss``: weighted IoU + BCE (MODELS.md §5.1) in two fused passes, backward as its own op.

Backends, in preference order: ``triton`` (ops/triton/structure_loss.py: separable 31-tap box sums,
weights, stable BCE-with-logits, sigmoid and per-sample I/U partial sums; CUDA, or CPU under
TRITON_INTERPRET=1; fp16/bf16/fp32), ``reference`` (ops/reference/structure_loss.py).

The op returns (loss (B,), stats (B, 5), weight (B, 1, H, W)); stats and weight are what the
backward op ``covseg::_structure_loss_backward`` needs (the weight is kept rather than recomputed:
one fp32 plane). The target gets no gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch._subclasses.fake_tensor import is_fake

from . import triton as triton_pkg
from ._dispatch import Backend, op_backends
from ._registration import triton_op
from .reference import structure_loss as ref

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _ref_forward(logits, target, bce_mode, iou_smooth):
    w, stats = ref.structure_loss_stats(logits, target, iou_smooth)
    return w, stats


def _triton_forward(logits, target, bce_mode, iou_smooth):
    from .triton import structure_loss as kernels

    return kernels.forward(logits, target)


def _triton_accepts(logits, target, *args) -> Optional[str]:
    if logits.dtype == torch.float64 or target.dtype == torch.float64:
        return "float64 is served by the reference"
    return None


def _select(logits, target, bce_mode, iou_smooth):
    # The Triton interpreter cannot run on fake tensors (opcheck, export tracing on CPU): the reference
    # then propagates shapes and dtypes, which are the same for every backend.
    if triton_pkg.interpreting() and is_fake(logits):
        return BACKENDS.reference
    return BACKENDS.select(logits.device.type, logits, target, bce_mode, iou_smooth)


BACKENDS = op_backends("structure_loss", _ref_forward)
BACKENDS.register(Backend("triton", _triton_forward, triton_pkg.available, _triton_accepts))


def _coefficients(grad: torch.Tensor, stats: torch.Tensor, numel: int, bce_mode: str, iou_smooth: float):
    """Per-sample (ca, cb, cbce) so that dz = w(ca g + cb(1−g))p(1−p) + cbce·[w](p − g)."""
    gr = grad.to(stats.dtype)
    inter, union = stats[:, 0], stats[:, 1]
    den = union - inter + iou_smooth
    ca = -gr / den
    cb = gr * (inter + iou_smooth) / den**2
    if bce_mode == "reference":
        cbce = (gr.sum() / max(1, numel)).expand_as(gr)
    else:
        cbce = gr / stats[:, 2]
    return torch.stack([ca, cb, cbce], dim=1)


@triton_op("covseg::structure_loss", mutates_args=())
def _structure_loss_op(logits: torch.Tensor, target: torch.Tensor, bce_mode: str,
                       iou_smooth: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    backend = _select(logits, target, bce_mode, iou_smooth)
    weight, stats = backend.fn(logits, target, bce_mode, iou_smooth)
    numel = logits[0].numel() if logits.shape[0] else 0
    loss = ref.combine(stats, numel, bce_mode, iou_smooth)
    return loss, stats, weight


@triton_op("covseg::_structure_loss_backward", mutates_args=())
def _structure_loss_backward_op(grad: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                                weight: torch.Tensor, stats: torch.Tensor, bce_mode: str,
                                iou_smooth: float) -> torch.Tensor:
    backend = _select(logits, target, bce_mode, iou_smooth)
    if backend.name == "triton":
        from .triton import structure_loss as kernels

        coef = _coefficients(grad, stats, logits.numel(), bce_mode, iou_smooth).float()
        return kernels.backward(logits, target, weight, coef, bce_mode == "weighted")
    return ref.structure_loss_backward(grad, logits, target, weight, stats, bce_mode, iou_smooth)


def _setup_context(ctx, inputs, output):
    logits, target, bce_mode, iou_smooth = inputs
    _, stats, weight = output
    ctx.save_for_backward(logits, target, weight, stats)
    ctx.bce_mode, ctx.iou_smooth = bce_mode, iou_smooth
    ctx.mark_non_differentiable(stats, weight)


def _backward(ctx, grad_loss, grad_stats, grad_weight):
    logits, target, weight, stats = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = torch.ops.covseg._structure_loss_backward(
            grad_loss.contiguous(), logits, target, weight, stats, ctx.bce_mode, ctx.iou_smooth)
    return grad_logits, None, None, None


_structure_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(logits, target, bce_mode, iou_smooth) -> None:
    for name, t in (("logits", logits), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"structure_loss: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"structure_loss: {name} must be a floating tensor (fp16/bf16/fp32/fp64), got {t.dtype}")
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"structure_loss: logits must be (B, 1, H, W), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"structure_loss: target shape {tuple(target.shape)} differs from logits "
                         f"{tuple(logits.shape)}")
    if target.device != logits.device:
        raise ValueError(f"structure_loss: target on {target.device}, logits on {logits.device}")
    if logits.numel() == 0:
        raise ValueError(f"structure_loss: empty input {tuple(logits.shape)}")
    if bce_mode not in ref.BCE_MODES:
        raise ValueError(f"structure_loss: bce_mode must be one of {ref.BCE_MODES}, got {bce_mode!r}")
    if iou_smooth < 0:
        raise ValueError(f"structure_loss: iou_smooth must be ≥ 0, got {iou_smooth}")


def structure_loss(logits: torch.Tensor, target: torch.Tensor, bce_mode: str = "reference",
                   iou_smooth: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Structure loss (weighted IoU + BCE) of logits against a [0, 1] target, fused.

    Args:
        logits: (B, 1, H, W) fp16/bf16/fp32/fp64 logits.
        target: (B, 1, H, W) target in [0, 1] (soft allowed; not checked, that would sync), no gradient.
        bce_mode: "reference" (plain mean BCE over the batch, as the reference repos run) or
            "weighted" (Σ w·bce / Σ w per sample).
        iou_smooth: the +s smoothing of the IoU term (1 Inf-Net/PraNet, 0 PFNet).
        reduction: "mean" (scalar, the training loss) or "none" (per-sample (B,)).
    Returns:
        fp32 loss (fp64 for fp64 logits): a scalar, or (B,) for reduction="none".
    Raises:
        TypeError / ValueError: non-float tensors, wrong shapes/devices, unknown bce_mode or reduction.
    """
    _validate(logits, target, bce_mode, iou_smooth)
    if reduction not in ("mean", "none"):
        raise ValueError(f"structure_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    loss = torch.ops.covseg.structure_loss(logits, target.detach(), bce_mode, float(iou_smooth))[0]
    return loss.mean() if reduction == "mean" else loss
