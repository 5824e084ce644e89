"""``covseg::channel_attention``: DANet CAM / PFNet CA channel attention, fused.

``torch.ops.covseg.channel_attention(x, variant) -> (out, lse)``; the public function
:func:`channel_attention` returns ``out = softmax(±X Xᵀ) X`` over channels of x (B, C, N).
``lse`` (B, C) is the fp32 log-sum-exp of each channel's energy row (the saved softmax state).
Variant ``"pfnet"`` uses softmax(E); ``"danet"`` uses softmax(rowmax(E) − E) = softmax(−E).
The γ·out + x epilogue stays in the module (nn/attention.py): it is one elementwise op.

The Triton backend is the flash-attention kernel of position attention applied to the transposed
views: sequence = channels (C), qk dim = value dim = pixels (N), q = k = v = xᵀ, scale = ±1. So the
Gram matrix, the row softmax (fp32, never materialised as C×C) and the product run in one kernel,
and the backward reuses the dq/dk/dv kernels: dx = (dq + dk + dv)ᵀ.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import triton as _triton
from ._dispatch import Backend, op_backends
from .reference.attention import channel_attention_lse

VARIANTS = ("pfnet", "danet")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _sign(variant: str) -> float:
    return 1.0 if variant == "pfnet" else -1.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reference_forward(x, variant):
    return channel_attention_lse(x, variant)


def _reference_backward(grad_out, grad_lse, x, out, lse, variant):
    ct = _compute_dtype(x.dtype)
    xf, dof = x.to(ct), grad_out.to(ct)
    sign = _sign(variant)
    p = torch.exp(torch.bmm(xf, xf.transpose(1, 2)) * sign - lse.to(ct).unsqueeze(-1))  # (B, C, C)
    dp = torch.bmm(dof, xf.transpose(1, 2))  # dp[i, j] = dO_i·x_j
    delta = (dof * out.to(ct)).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse.to(ct)
    ds = p * (dp - delta.unsqueeze(-1))
    # E = X Xᵀ feeds both sides; out = P X feeds the value side.
    dx = torch.bmm(ds + ds.transpose(1, 2), xf) * sign + torch.bmm(p.transpose(1, 2), dof)
    return dx.to(x.dtype)


def _triton_accepts(x, *_args) -> Optional[str]:
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype} runs on the reference (the kernels take fp32/fp16/bf16)"
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return "bf16 is not exact in the Triton interpreter (tl.dot); bf16 runs on CUDA only"
    return None


def _triton_forward(x, variant):
    from .triton.attention_launch import attention_forward

    xt = x.transpose(1, 2)  # (B, N, C): attention coordinates, head dim N, sequence C
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _, lse = attention_forward(xt, xt, xt, _sign(variant), out=out.transpose(1, 2))
    return out, lse


def _triton_backward(grad_out, grad_lse, x, out, lse, variant):
    from .triton.attention_launch import attention_backward

    xt = x.transpose(1, 2)
    grads = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(3)]
    attention_backward(grad_out.transpose(1, 2), grad_lse, xt, xt, xt, out.transpose(1, 2), lse, _sign(variant),
                       *(g.transpose(1, 2) for g in grads))
    return grads[0] + grads[1] + grads[2]


BACKENDS = op_backends("channel_attention", _reference_forward)
BACKENDS.register(Backend("triton", _triton_forward, _triton.available, _triton_accepts))
BACKWARD = {"triton": _triton_backward, "reference": _reference_backward}


@torch.library.triton_op("covseg::channel_attention", mutates_args=())
def _channel_attention_op(x: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    backend = BACKENDS.select(x.device.type, x, variant)
    return backend.fn(x, variant)


@_channel_attention_op.register_fake
def _(x, variant):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        x.shape[:2], dtype=_compute_dtype(x.dtype))


@torch.library.triton_op("covseg::_channel_attention_backward", mutates_args=())
def _channel_attention_backward_op(grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor], x: torch.Tensor,
                                   out: torch.Tensor, lse: torch.Tensor, variant: str) -> torch.Tensor:
    backend = BACKENDS.select(x.device.type, x, variant)
    return BACKWARD[backend.name](grad_out, grad_lse, x, out, lse, variant)


@_channel_attention_backward_op.register_fake
def _(grad_out, grad_lse, x, out, lse, variant):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, variant = inputs
    out, lse = output
    ctx.save_for_backward(x, out, lse)
    ctx.variant = variant


def _backward(ctx, grad_out, grad_lse):
    x, out, lse = ctx.saved_tensors
    dx = torch.ops.covseg._channel_attention_backward(grad_out.contiguous(), grad_lse, x, out, lse, ctx.variant)
    return dx, None


_channel_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(x: torch.Tensor, variant: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"channel_attention: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"channel_attention: x must be 3-D (B, C, N), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"channel_attention: x dtype must be float16/bfloat16/float32/float64, got {x.dtype}")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"channel_attention: C and N must be ≥ 1, got shape {tuple(x.shape)}")
    if variant not in VARIANTS:
        raise ValueError(f"channel_attention: variant must be 'pfnet' or 'danet', got {variant!r}")


def channel_attention(x: torch.Tensor, variant: str = "pfnet") -> torch.Tensor:
    """Channel attention ``softmax(±X Xᵀ) X`` over channels, energies and softmax in fp32.

    Args:
        x: (B, C, N) features (a (B, C, H, W) map flattened).
        variant: ``"pfnet"`` (softmax(E), Ref-Net/PFNet CA) or ``"danet"`` (softmax(max E − E) = softmax(−E)).
    Returns:
        (B, C, N) in x's dtype (contiguous).
    Raises:
        ValueError / TypeError: wrong rank, empty C or N, non-float dtype, unknown variant.
    """
    _validate(x, variant)
    return torch.ops.covseg.channel_attention(x, variant)[0]
