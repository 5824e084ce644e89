"""``covseg::position_attention``: DANet/PFNet position attention with O(N·C) memory.

``torch.ops.covseg.position_attention(q, k, v, scale) -> (out, lse)``; the public function
:func:`position_attention` returns ``out``. ``lse`` (B, N) is the natural log-sum-exp of each
query's scores: the only softmax state the forward saves. The backward is the separate op
``covseg::_position_attention_backward`` (FA2: recompute p from q, k, lse).

Backends, in preference order: ``triton`` (flash-attention kernels in ops/triton/attention.py; CUDA,
or CPU under TRITON_INTERPRET=1; fp32/fp16/bf16, bf16 not in the interpreter) and ``reference``
(materialises the N×N matrix; any float dtype, float64 included).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import triton as _triton
from ._dispatch import Backend, op_backends
from ._registration import triton_op
from .reference.attention import position_attention_lse
from .triton.device import INT32_MAX, batch_over_grid

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reference_forward(q, k, v, scale):
    return position_attention_lse(q, k, v, scale)


def _reference_backward(grad_out, grad_lse, q, k, v, out, lse, scale):
    ct = _lse_dtype(q.dtype)
    qf, kf, vf, dof = q.to(ct), k.to(ct), v.to(ct), grad_out.to(ct)
    p = torch.exp(torch.bmm(qf.transpose(1, 2), kf) * scale - lse.to(ct).unsqueeze(-1))  # p[b, i, j]
    dv = torch.bmm(dof, p)  # dv[c, j] = Σ_i dO[c, i] p[i, j]
    dp = torch.bmm(dof.transpose(1, 2), vf)  # dp[i, j] = dO_i·v_j
    delta = (dof * out.to(ct)).sum(1)
    if grad_lse is not None:
        delta = delta - grad_lse.to(ct)
    ds = p * (dp - delta.unsqueeze(-1))
    dq = torch.bmm(kf, ds.transpose(1, 2)) * scale
    dk = torch.bmm(qf, ds) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _triton_accepts(q, k, v, *_args) -> Optional[str]:
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} runs on the reference (the kernels take fp32/fp16/bf16)"
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return "bf16 is not exact in the Triton interpreter (tl.dot); bf16 runs on CUDA only"
    if max(t.shape[1] for t in (q, k, v)) * q.shape[2] > INT32_MAX:
        return "a (C, N) slice of q, k or v has more than 2³¹ − 1 elements: beyond the kernels' int32 offsets"
    return batch_over_grid(q.shape[0])


def _triton_forward(q, k, v, scale):
    from .triton.attention_launch import attention_forward

    return attention_forward(q, k, v, scale)


def _triton_backward(grad_out, grad_lse, q, k, v, out, lse, scale):
    from .triton.attention_launch import attention_backward

    return attention_backward(grad_out, grad_lse, q, k, v, out, lse, scale)


BACKENDS = op_backends("position_attention", _reference_forward)
BACKENDS.register(Backend("triton", _triton_forward, _triton.available, _triton_accepts))
BACKWARD = {"triton": _triton_backward, "reference": _reference_backward}


@triton_op("covseg::position_attention", mutates_args=())
def _position_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    backend = BACKENDS.select(q.device.type, q, k, v, scale)
    return backend.fn(q, k, v, scale)


@_position_attention_op.register_fake
def _(q, k, v, scale):
    b, _, n = q.shape
    return v.new_empty((b, v.shape[1], n)), q.new_empty((b, n), dtype=_lse_dtype(q.dtype))


@triton_op("covseg::_position_attention_backward", mutates_args=())
def _position_attention_backward_op(
    grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    backend = BACKENDS.select(q.device.type, q, k, v, scale)
    return BACKWARD[backend.name](grad_out, grad_lse, q, k, v, out, lse, scale)


@_position_attention_backward_op.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.covseg._position_attention_backward(
        grad_out.contiguous(), grad_lse, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_position_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"position_attention: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"position_attention: {name} must be 3-D (B, C, N), got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"position_attention: {name} dtype must be float16/bfloat16/float32/float64, got {t.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"position_attention: q and k must have the same shape (B, Cq, N), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[0] != q.shape[0] or v.shape[2] != q.shape[2]:
        raise ValueError(f"position_attention: v must be (B, C, N) with the B and N of q {tuple(q.shape)}, "
                         f"got {tuple(v.shape)}")
    if q.shape[1] < 1 or v.shape[1] < 1 or q.shape[2] < 1:
        raise ValueError(f"position_attention: Cq, C and N must be ≥ 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"position_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"position_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"position_attention: scale must be a finite number, got {scale!r}")


def position_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Position attention ``out[b, :, i] = Σ_j softmax_j(scale · q_i·k_j) v[b, :, j]`` without an N×N matrix.

    Args:
        q, k: (B, Cq, N) queries and keys (PAM: 1×1 conv outputs at C // 8, flattened).
        v: (B, C, N) values; C may differ from Cq.
        scale: logit scale (DANet/PFNet use 1.0: unscaled).
    Returns:
        (B, C, N) in v's dtype; the softmax runs in fp32 (float64 for float64 inputs).
    Raises:
        ValueError / TypeError: wrong rank, mismatched shapes, dtypes or devices, a non-finite scale.
    """
    _validate(q, k, v, scale)
    return torch.ops.covseg.position_attention(q, k, v, float(scale))[0]
