"""``covseg::channel_attention``: DANet CAM / PFNet CA channel attention, fused, with the γ·out + x epilogue.

``torch.ops.covseg.channel_attention(x, variant, gamma=None) -> (out, lse)``; the public function
:func:`channel_attention` returns ``out = softmax(±X Xᵀ) X`` over the channels of x (B, C, N), or, with a
1-element ``gamma`` tensor, ``out = γ·softmax(±X Xᵀ) X + x`` (the module's residual, fused; dγ is a
gradient like any other). ``lse`` (B, C) is the fp32 log-sum-exp of each channel's signed energy row.
Variant ``"pfnet"`` uses softmax(E); ``"danet"`` uses softmax(rowmax(E) − E) = softmax(−E).
``out`` (and dx) take x's layout (``empty_like``), so a channels_last map flattened to (B, C, N) stays so.

The Triton backend has two paths with the same results (costs: ``triton/attention_cost.py``):

- ``gram`` (``triton/attention_gram.py``): the fp32 C×C energy is materialised. Forward: Gram
  X Xᵀ as a split-N reduction, row softmax, out = P X with the epilogue (3 launches, 4·B·C²·N FLOPs,
  3E + O(SPLIT·B·C²) bytes, E = bytes of x). Backward: E and dY Xᵀ in one sweep over x, then dS,
  then dX = (γP)ᵀ dY + s(dS + dSᵀ) X + dY (3 launches, 8·B·C²·N FLOPs, 5E + O(SPLIT·B·C²) bytes).
  Memory O(B·SPLIT·C²), tiny next to x when C ≪ N (the APM at f2–f4).
- ``flash``: the position-attention kernels on transposed views (sequence = C, head dim = N,
  q = k = v = xᵀ, scale = ±1), so nothing C×C is stored; but each BLOCK_C-pixel value tile recomputes
  the whole Gram: forward 2·B·C²·N·(⌈N/BLOCK_C⌉ + 1) FLOPs. Right for C ≫ N (Ref-Net f5: C = 2048,
  N = 121, a single value tile). With γ the forward kernel applies the epilogue and the backward
  recomputes the attention output (one extra forward) instead of saving it.

The path is the one with the smaller estimated fwd+bwd time on the tensor's GPU (roofline rates from
``triton/device.py``; an H100's for CPU tensors), or ``COVSEG_CHANNEL_ATTENTION_PATH=gram|flash``.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import triton as _triton
from ._dispatch import Backend, op_backends
from ._registration import triton_op
from .reference.attention import channel_attention_lse
from .triton.device import INT32_MAX, batch_over_grid

VARIANTS = ("pfnet", "danet")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _sign(variant: str) -> float:
    return 1.0 if variant == "pfnet" else -1.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _like_x(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (contiguous) in x's layout, as ``empty_like(x)`` gives it (the fake impl's promise)."""
    return t if x.is_contiguous() else torch.empty_like(x, dtype=t.dtype).copy_(t)


def _no_dgamma(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(0)


def _reference_forward(x, variant, gamma):
    out, lse = channel_attention_lse(x, variant, gamma)
    return _like_x(out, x), lse


def _reference_backward(grad_out, grad_lse, x, out, lse, gamma, variant):
    ct = _compute_dtype(x.dtype)
    xf, dy = x.to(ct), grad_out.to(ct)
    sign = _sign(variant)
    p = torch.exp(torch.bmm(xf, xf.transpose(1, 2)) * sign - lse.to(ct).unsqueeze(-1))  # (B, C, C)
    g = None if gamma is None else gamma.to(ct).reshape(())
    do = dy if g is None else dy * g
    dp = torch.bmm(do, xf.transpose(1, 2))  # dp[i, j] = dO_i·x_j
    delta = (p * dp).sum(-1)  # = Σ_n dO·(P X), without the attention output
    if grad_lse is not None:
        delta = delta - grad_lse.to(ct)
    ds = p * (dp - delta.unsqueeze(-1))
    # E = X Xᵀ feeds both sides; out = P X feeds the value side.
    dx = torch.bmm(ds + ds.transpose(1, 2), xf) * sign + torch.bmm(p.transpose(1, 2), do)
    if g is None:
        return _like_x(dx.to(x.dtype), x), _no_dgamma(x)
    dgamma = (dy * torch.bmm(p, xf)).sum()
    return _like_x((dx + dy).to(x.dtype), x), dgamma.reshape(gamma.shape).to(gamma.dtype)


def _triton_accepts(x, *_args) -> Optional[str]:
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype} runs on the reference (the kernels take fp32/fp16/bf16)"
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return "bf16 is not exact in the Triton interpreter (tl.dot); bf16 runs on CUDA only"
    if x.shape[1] * x.shape[2] > INT32_MAX:
        return f"C·N = {x.shape[1] * x.shape[2]} elements per image: beyond the kernels' int32 offsets"
    return batch_over_grid(x.shape[0])


def path_for(x: torch.Tensor, gamma: Optional[torch.Tensor] = None) -> str:
    """The Triton path (``gram`` or ``flash``) this x takes (see the module docstring)."""
    from .triton.attention_cost import channel_attention_path

    b, c, n = x.shape
    return channel_attention_path(b, c, n, x.dtype, gamma is not None, x.device)


def _flash_attention(x, sign, gamma=None, out=None):
    from .triton.attention_launch import attention_forward

    xt = x.transpose(1, 2)  # (B, N, C): attention coordinates, head dim N, sequence C
    out = torch.empty_like(x) if out is None else out
    _, lse = attention_forward(xt, xt, xt, sign, out=out.transpose(1, 2),
                               residual=xt if gamma is not None else None, gamma=gamma)
    return out, lse


def _triton_forward(x, variant, gamma):
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out, x.new_empty(x.shape[:2], dtype=torch.float32)
    if path_for(x, gamma) == "gram":
        from .triton.attention_gram_launch import gram_forward

        return out, gram_forward(x, _sign(variant), gamma, out)
    return _flash_attention(x, _sign(variant), gamma, out)


def _triton_backward(grad_out, grad_lse, x, out, lse, gamma, variant):
    if x.numel() == 0:
        return torch.empty_like(x), (torch.zeros_like(gamma) if gamma is not None else _no_dgamma(x))
    grad_out = grad_out.to(x.dtype)
    if path_for(x, gamma) == "gram":
        from .triton.attention_gram_launch import gram_backward

        dx = torch.empty_like(x)
        r = gram_backward(grad_out, grad_lse, x, lse, gamma, _sign(variant), dx)
        return dx, (r.sum().reshape(gamma.shape).to(gamma.dtype) if gamma is not None else _no_dgamma(x))
    return _flash_backward(grad_out, grad_lse, x, out, lse, gamma, variant)


def _flash_backward(grad_out, grad_lse, x, out, lse, gamma, variant):
    from .triton.attention_launch import attention_backward

    sign = _sign(variant)
    dgamma = _no_dgamma(x)
    if gamma is not None:  # out = γ·att + x: recompute att (one forward) rather than save it
        att, _ = _flash_attention(x, sign)
        dgamma = (grad_out.float() * att.float()).sum().reshape(gamma.shape).to(gamma.dtype)
        do = (grad_out.float() * gamma.float().reshape(())).to(x.dtype)
    else:
        att, do = out, grad_out
    xt = x.transpose(1, 2)
    grads = [torch.empty_like(x) for _ in range(3)]
    attention_backward(do.transpose(1, 2), grad_lse, xt, xt, xt, att.transpose(1, 2), lse, sign,
                       *(g.transpose(1, 2) for g in grads))
    dx = grads[0] + grads[1] + grads[2]  # x's layout, like each term
    if gamma is not None:
        dx += grad_out
    return dx, dgamma


BACKENDS = op_backends("channel_attention", _reference_forward)
BACKENDS.register(Backend("triton", _triton_forward, _triton.available, _triton_accepts))
BACKWARD = {"triton": _triton_backward, "reference": _reference_backward}


@triton_op("covseg::channel_attention", mutates_args=())
def _channel_attention_op(x: torch.Tensor, variant: str,
                          gamma: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    backend = BACKENDS.select(x.device.type, x, variant, gamma)
    return backend.fn(x, variant, gamma)


@_channel_attention_op.register_fake
def _(x, variant, gamma=None):
    return torch.empty_like(x), x.new_empty(x.shape[:2], dtype=_compute_dtype(x.dtype))


@triton_op("covseg::_channel_attention_backward", mutates_args=())
def _channel_attention_backward_op(grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor], x: torch.Tensor,
                                   out: Optional[torch.Tensor], lse: torch.Tensor, gamma: Optional[torch.Tensor],
                                   variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dγ); dγ is an empty tensor when gamma is None. ``out`` is needed only without γ (flash path)."""
    backend = BACKENDS.select(x.device.type, x, variant, gamma)
    return BACKWARD[backend.name](grad_out, grad_lse, x, out, lse, gamma, variant)


@_channel_attention_backward_op.register_fake
def _(grad_out, grad_lse, x, out, lse, gamma, variant):
    return torch.empty_like(x), (torch.empty_like(gamma) if gamma is not None else _no_dgamma(x))


def _setup_context(ctx, inputs, output):
    x, variant, gamma = inputs
    out, lse = output
    # Without γ, out is the attention output (the flash backward's delta needs it); with γ no path needs it.
    ctx.save_for_backward(x, out if gamma is None else None, lse, gamma)
    ctx.variant = variant


def _backward(ctx, grad_out, grad_lse):
    x, out, lse, gamma = ctx.saved_tensors
    dx, dgamma = torch.ops.covseg._channel_attention_backward(grad_out, grad_lse, x, out, lse, gamma, ctx.variant)
    return dx, None, (dgamma if gamma is not None else None)


_channel_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(x: torch.Tensor, variant: str, gamma: Optional[torch.Tensor]) -> None:
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
    if gamma is None:
        return
    if not isinstance(gamma, torch.Tensor):
        raise TypeError(f"channel_attention: gamma must be a 1-element tensor or None, got {type(gamma).__name__}")
    if gamma.numel() != 1:
        raise ValueError(f"channel_attention: gamma must have exactly 1 element, got shape {tuple(gamma.shape)}")
    if not gamma.is_floating_point():
        raise TypeError(f"channel_attention: gamma must be a float tensor, got {gamma.dtype}")
    if gamma.device != x.device:
        raise ValueError(f"channel_attention: gamma is on {gamma.device} but x on {x.device}")


def channel_attention(x: torch.Tensor, variant: str = "pfnet", gamma: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Channel attention ``softmax(±X Xᵀ) X`` over channels (``γ·that + x`` with gamma), energies in fp32.

    Args:
        x: (B, C, N) features (a (B, C, H, W) map flattened); B may be 0.
        variant: ``"pfnet"`` (softmax(E), Ref-Net/PFNet CA) or ``"danet"`` (softmax(max E − E) = softmax(−E)).
        gamma: optional 1-element float tensor on x's device (any float dtype; its gradient comes back in
            that dtype): the residual epilogue ``γ·out + x``, computed in fp32 and rounded once.
    Returns:
        (B, C, N) in x's dtype and layout (``empty_like(x)``).
    Raises:
        ValueError / TypeError: wrong rank, empty C or N, non-float dtype, unknown variant, bad gamma.
    """
    _validate(x, variant, gamma)
    return torch.ops.covseg.channel_attention(x, variant, gamma)[0]
