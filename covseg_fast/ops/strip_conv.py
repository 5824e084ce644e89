"""``covseg::strip_conv``: SegNeXt's multi-scale depthwise strip convolution (MSCA core), fused.

    a0 = dw_{k0×k0}(x) + b0;   s = a0 + Σ_i (dw_{k_i×1}(dw_{1×k_i}(a0) + bh_i) + bv_i)

Backends, in preference order: ``triton`` (ops/triton/strip_conv.py; CUDA tensors, or CPU tensors
under ``TRITON_INTERPRET=1``), ``reference`` (ops/reference/strip_conv.py). The backward is its own
op, ``covseg::_strip_conv_backward``, returning the gradients of x and of every weight and bias;
it recomputes a0 and the horizontal strips instead of saving them (only x and the weights are
saved). The Triton forward is one launch (``COVSEG_STRIP_CONV_SCHEDULE=split``: three; see
ops/triton/strip_conv.py). Kernel sizes come from the weight shapes, so any odd sizes work; the Triton backend takes up
to 3 strip branches (more are served by the reference).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import triton as triton_pkg
from ._dispatch import Backend, op_backends
from ._registration import triton_op
from .reference import strip_conv as ref

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_accepts(x, wh=(), *args) -> Optional[str]:
    if x.dtype not in FLOAT_DTYPES:
        return f"dtype {x.dtype} not supported by the Triton kernels (float32/float16/bfloat16 only)"
    if len(wh) > 3:
        return f"{len(wh)} strip branches; the Triton kernels take at most 3"
    return None


def _run_triton(x, w0, b0, wh, bh, wv, bv):
    from .triton import strip_conv as kernels

    return kernels.strip_conv_forward(x, w0, b0, wh, bh, wv, bv, _new_output(x))


def _run_triton_backward(grad, x, w0, b0, wh, bh, wv, bv):
    from .triton import strip_conv as kernels

    return kernels.strip_conv_backward(grad, x, w0, b0, wh, bh, wv, bv)


def _conv_backward(grad, inp, w, need_input: bool = True):
    """(grad input or None, grad weight, grad bias) of a depthwise "same" conv, via aten."""
    kh, kw = w.shape[-2:]
    return torch.ops.aten.convolution_backward(
        grad, inp, w, [w.shape[0]], [1, 1], [kh // 2, kw // 2], [1, 1], False, [0, 0], w.shape[0],
        [need_input, True, True])


def _reference_backward(grad, x, w0, b0, wh, bh, wv, bv):
    """The same recompute-and-backprop schedule as the Triton backward, in ATen ops (any dtype)."""
    c = x.shape[1]
    a0 = F.conv2d(x, w0, b0, padding=w0.shape[-1] // 2, groups=c)
    ga0 = grad
    gwh, gbh, gwv, gbv = [], [], [], []
    for i in range(len(wh)):
        k = wh[i].shape[-1]
        t = F.conv2d(a0, wh[i], bh[i], padding=(0, k // 2), groups=c)
        gt, gw, gb = _conv_backward(grad, t, wv[i])
        gwv.append(gw)
        gbv.append(gb)
        ga, gw, gb = _conv_backward(gt, a0, wh[i])
        gwh.append(gw)
        gbh.append(gb)
        ga0 = ga0 + ga
    gx, gw0, gb0 = _conv_backward(ga0, x, w0)
    return [gx, gw0, gb0, *gwh, *gbh, *gwv, *gbv]


BACKENDS = op_backends("strip_conv", ref.strip_conv)
BACKENDS.register(Backend("triton", _run_triton, triton_pkg.available, _triton_accepts))
# The backward op uses the same selection; its backends mirror the forward's by name.
_BACKWARD = {"triton": _run_triton_backward, "reference": _reference_backward}


def _output_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _new_output(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, device=x.device, dtype=x.dtype).contiguous(memory_format=_output_format(x))


@triton_op("covseg::strip_conv", mutates_args=())
def _strip_conv_op(
    x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, wh: list[torch.Tensor], bh: list[torch.Tensor],
    wv: list[torch.Tensor], bv: list[torch.Tensor],
) -> torch.Tensor:
    backend = BACKENDS.select(x.device.type, x, wh)
    out = backend.fn(x, w0, b0, wh, bh, wv, bv)
    return out.contiguous(memory_format=_output_format(x))


@triton_op("covseg::_strip_conv_backward", mutates_args=())
def _strip_conv_backward_op(
    grad: torch.Tensor, x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, wh: list[torch.Tensor],
    bh: list[torch.Tensor], wv: list[torch.Tensor], bv: list[torch.Tensor],
) -> list[torch.Tensor]:
    backend = BACKENDS.select(x.device.type, x, wh)
    grads = _BACKWARD[backend.name](grad, x, w0, b0, wh, bh, wv, bv)
    return [g.contiguous(memory_format=_output_format(t)) if t.dim() == 4 else g.contiguous()
            for g, t in zip(grads, (x, w0, b0, *wh, *bh, *wv, *bv))]


@_strip_conv_op.register_fake
def _(x, w0, b0, wh, bh, wv, bv):
    return _new_output(x)


@_strip_conv_backward_op.register_fake
def _(grad, x, w0, b0, wh, bh, wv, bv):
    return [torch.empty(t.shape, device=t.device, dtype=t.dtype).contiguous(
        memory_format=_output_format(t) if t.dim() == 4 else torch.contiguous_format)
        for t in (x, w0, b0, *wh, *bh, *wv, *bv)]


def _setup_context(ctx, inputs, output):
    x, w0, b0, wh, bh, wv, bv = inputs
    ctx.n = len(wh)
    ctx.save_for_backward(x, w0, b0, *wh, *bh, *wv, *bv)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    n = ctx.n
    x, w0, b0 = saved[:3]
    wh, bh, wv, bv = (list(saved[3 + k * n: 3 + (k + 1) * n]) for k in range(4))
    g = torch.ops.covseg._strip_conv_backward(grad, x, w0, b0, wh, bh, wv, bv)
    return g[0], g[1], g[2], *(list(g[3 + k * n: 3 + (k + 1) * n]) for k in range(4))


_strip_conv_op.register_autograd(_backward, setup_context=_setup_context)


def _check_kernel(name: str, w: torch.Tensor, c: int, shape: Optional[str]) -> tuple[int, int]:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"strip_conv: {name} must be a tensor, got {type(w).__name__}")
    if w.dim() != 4 or w.shape[0] != c or w.shape[1] != 1:
        raise ValueError(f"strip_conv: {name} must be a depthwise weight (C={c}, 1, kh, kw), got shape {tuple(w.shape)}")
    kh, kw = w.shape[-2:]
    if shape == "h" and kh != 1 or shape == "v" and kw != 1 or shape == "sq" and kh != kw:
        want = {"h": "(C, 1, 1, k)", "v": "(C, 1, k, 1)", "sq": "square (C, 1, k, k)"}[shape]
        raise ValueError(f"strip_conv: {name} must be {want}, got shape {tuple(w.shape)}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"strip_conv: kernel sizes must be odd, {name} has {kh}×{kw}")
    return kh, kw


def _validate(x, w0, b0, wh, bh, wv, bv) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"strip_conv: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"strip_conv: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"strip_conv: x must be a floating-point tensor, got {x.dtype}")
    c = x.shape[1]
    if not (len(wh) == len(bh) == len(wv) == len(bv)):
        raise ValueError(f"strip_conv: wh, bh, wv, bv must have one entry per branch, got lengths "
                         f"{len(wh)}, {len(bh)}, {len(wv)}, {len(bv)}")
    _check_kernel("w0", w0, c, "sq")
    for i in range(len(wh)):
        _, k_h = _check_kernel(f"wh[{i}]", wh[i], c, "h")
        k_v, _ = _check_kernel(f"wv[{i}]", wv[i], c, "v")
        if k_h != k_v:
            raise ValueError(f"strip_conv: branch {i} has horizontal size {k_h} but vertical size {k_v}")
    named = [("w0", w0), ("b0", b0), *((f"{n}[{i}]", t) for n, ts in (("wh", wh), ("bh", bh), ("wv", wv),
                                                                      ("bv", bv)) for i, t in enumerate(ts))]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"strip_conv: {name} must be a tensor, got {type(t).__name__}")
        if name.startswith("b") and tuple(t.shape) != (c,):
            raise ValueError(f"strip_conv: bias {name} must have shape ({c},), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"strip_conv: {name} is on {t.device} but x is on {x.device}")
        if t.dtype != x.dtype:
            raise TypeError(f"strip_conv: {name} has dtype {t.dtype} but x has {x.dtype}")


def strip_conv(
    x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, wh: Sequence[torch.Tensor], bh: Sequence[torch.Tensor],
    wv: Sequence[torch.Tensor], bv: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Multi-scale strip convolution sum ``s = a0 + Σ_i v_i(h_i(a0))``, ``a0 = dw_{k0×k0}(x) + b0``.

    Args:
        x: (B, C, H, W) float32/float16/bfloat16 (float64 runs the reference); NCHW or channels_last.
        w0: (C, 1, k0, k0) depthwise kernel, b0: (C,).
        wh: per branch (C, 1, 1, k_i) horizontal kernels; bh: (C,) biases.
        wv: per branch (C, 1, k_i, 1) vertical kernels; bv: (C,) biases. All kernel sizes odd.
    Returns:
        s: (B, C, H, W), x's dtype (the autocast dtype inside an autocast region, where every
        input is cast to it, as F.conv2d would), channels_last when x is.
    Raises:
        ValueError / TypeError: wrong rank, channel or branch mismatch, even kernel sizes, wrong weight
        shapes, tensors on different devices or with different dtypes.
    """
    wh, bh, wv, bv = list(wh), list(bh), list(wv), list(bv)
    if isinstance(x, torch.Tensor) and x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        # Under autocast, behave like the reference's F.conv2d: everything runs in the autocast dtype.
        dtype = torch.get_autocast_dtype(x.device.type)
        cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        x, w0, b0 = cast(x), cast(w0), cast(b0)
        wh, bh, wv, bv = ([cast(t) for t in ts] for ts in (wh, bh, wv, bv))
    _validate(x, w0, b0, wh, bh, wv, bv)
    return torch.ops.covseg.strip_conv(x, w0, b0, wh, bh, wv, bv)
