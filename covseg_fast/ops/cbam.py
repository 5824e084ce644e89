"""Fused CBAM (MODELS.md §2.6): three forward ops around a PyTorch MLP / 7×7 conv / BatchNorm, and a fused backward.

Forward (E = bytes of x):

    covseg::cbam_channel_stats(x)     → mean_HW x, max_HW x (fp32), #max         pass 1: reads x              E
    (PyTorch) ca = σ(MLP(mean) + MLP(max))                                        (B, C): tiny
    covseg::cbam_spatial_pool(x, ca)  → [max_C, mean_C](x·ca) (fp32), #max       pass 2: reads x              E
    (PyTorch) sa = σ(BN(conv7×7(pooled)))                                         (B, 1, H, W): 2/C of x
    covseg::cbam_apply(x, ca, sa)     → x·ca·sa                                   pass 3: reads x, writes out  2E

4E, the floor of KERNELS.md §3 without SMEM halo tiles; no full-size intermediate is written (x₁ = x·ca is
recomputed, never stored). The conv and BN stay in PyTorch on purpose: BN then *is* ``nn.BatchNorm2d`` (batch
statistics in training, running-stat update with unbiased variance and momentum or the cumulative average,
running statistics in eval), so the ops mutate nothing.

Backward of the whole block, ``cbam()`` (g = ∂L/∂out), ≈6E:

    covseg::_cbam_apply_backward_reduce(g, x, ca, sa)                            pass A: reads g, x           2E
        → Σ_HW g·x·sa (apply part of grad_ca), grad_sa = Σ_C g·x·ca
    (autograd) σ, BatchNorm, conv backward → grad_pooled                          small
    covseg::_cbam_spatial_pool_backward_reduce(grad_pooled, x, ca, pooled, #max)  pass B: reads x              E
        → Σ_HW g₁·x (pool part of grad_ca), g₁ = grad_max_C·[x·ca = max_C]/#max + grad_mean_C/C
    (PyTorch) σ′ and the MLP backward in closed form → grad_mean, grad_max, MLP weight/bias grads   tiny
    covseg::_cbam_block_backward_x(g, x, ca, sa, grad_pooled, …, grad_mean, …)   pass C: reads g, x,
        → grad_x = ca·(g·sa + g₁) + grad_mean/HW + grad_max·[x = max_HW]/#max      writes grad_x once  3E

Before, autograd ran each forward op's own backward op (``covseg::_cbam_*_backward``, still there for the ops used
on their own), each writing a full-size grad_x (3E + 2E + 2E), and summed the three with two full-size adds (2 × 3E):
≈13E. Launches touching x: forward 3; backward 3, was 5 (three grad_x writes and two adds). Small launches, on
(B, C), (B, 1, H, W) or (B, 2, H, W) tensors, in fp32 training: forward 10 (cat, MLP, σ: 6; conv; BN 2; σ) plus
6 that merge the channel-stat partials when HW is split over programs (as at 256×256); backward 15 (σ, BN and
conv backward 3; σ′ and the MLP backward 10; two partial-sum reductions), the unfused backward had 19. Eval
with ``batch_norm=None`` and the BN folded into ``conv_weight`` / ``conv_bias`` (``nn.CBAM``): forward 8. bf16
adds 2 casts forward (MLP input, pooled map) and 2 backward (grad_sa for σ′, grad_logits for the MLP backward,
which runs in the dtype the MLP ran in). Counts per ``nn.CBAM`` call at refnet_f5: benchmarks/README.md,
pinned by tests/ops/test_cbam_backward.py::test_launch_counts.

How autograd is made to write grad_x once: two ``torch.autograd.Function`` s (ops/cbam_autograd.py) cover
the x-dependent parts; ``cbam()`` (below) keeps the conv, BN and σ between them as ordinary autograd ops.

Backends, in preference order: ``triton`` (CUDA; CPU under TRITON_INTERPRET=1; fp32/fp16/bf16), then
``reference`` (ops/reference/cbam.py; also float64); every op, the backward ones too, dispatches on its own.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import triton as _triton_pkg
from ._dispatch import Backend, op_backends
from ._registration import triton_op
from .cbam_autograd import _ApplyGates, _GateAndPool
from .reference import cbam as ref
from .triton.device import batch_over_grid

tk = None
if _triton_pkg.import_error is None:
    from .triton import cbam as tk  # noqa: F811

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
Tensor = torch.Tensor


def _triton_accepts(x: Tensor, *rest) -> Optional[str]:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {x.dtype} is not float32/float16/bfloat16 (the reference serves it)"
    return batch_over_grid(x.shape[0])


_OPS = ("cbam_channel_stats", "cbam_spatial_pool", "cbam_apply")
_REF = {"cbam_channel_stats": (ref.channel_stats, ref.channel_stats_backward),
        "cbam_spatial_pool": (ref.spatial_pool, ref.spatial_pool_backward),
        "cbam_apply": (ref.apply, ref.apply_backward)}
_TRITON = {} if tk is None else {"cbam_channel_stats": (tk.channel_stats, tk.channel_stats_backward),
                                 "cbam_spatial_pool": (tk.spatial_pool, tk.spatial_pool_backward),
                                 "cbam_apply": (tk.apply, tk.apply_backward)}
# The fused block backward's three ops (passes A, B, C): backward-only, each its own dispatch entry.
_BLOCK_BWD = ("_cbam_apply_backward_reduce", "_cbam_spatial_pool_backward_reduce", "_cbam_block_backward_x")
_REF.update({"_cbam_apply_backward_reduce": (ref.apply_backward_reduce, None),
             "_cbam_spatial_pool_backward_reduce": (ref.spatial_pool_backward_reduce, None),
             "_cbam_block_backward_x": (ref.block_backward_x, None)})
if tk is not None:
    _TRITON.update({"_cbam_apply_backward_reduce": (tk.apply_backward_reduce, None),
                    "_cbam_spatial_pool_backward_reduce": (tk.spatial_pool_backward_reduce, None),
                    "_cbam_block_backward_x": (tk.block_backward_x, None)})
BACKENDS = {}
for _name in (*_OPS, *_BLOCK_BWD):
    BACKENDS[_name] = op_backends(_name, _REF[_name][0])
    if tk is not None:
        BACKENDS[_name].register(Backend("triton", _TRITON[_name][0], _triton_pkg.available, _triton_accepts))


def _impl(op: str, x: Tensor, backward: bool = False) -> Callable:
    name = BACKENDS[op].select(x.device.type, x).name
    table = _TRITON if name == "triton" else _REF
    return table[op][1 if backward else 0]


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- covseg::cbam_channel_stats
@triton_op("covseg::cbam_channel_stats", mutates_args=())
def _channel_stats_op(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("cbam_channel_stats", x)(x)


@triton_op("covseg::_cbam_channel_stats_backward", mutates_args=())
def _channel_stats_backward_op(g_mean: Tensor, g_max: Tensor, x: Tensor, mx: Tensor, count: Tensor) -> Tensor:
    return _impl("cbam_channel_stats", x, backward=True)(g_mean, g_max, x, mx, count)


@_channel_stats_op.register_fake
def _(x):
    b, c = x.shape[:2]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty((b, c), dtype=acc), x.new_empty((b, c), dtype=acc), x.new_empty((b, c), dtype=torch.int32)


@_channel_stats_backward_op.register_fake
def _(g_mean, g_max, x, mx, count):
    return torch.empty_like(x)


def _stats_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1], output[2])


def _stats_backward(ctx, g_mean, g_max, _g_count):
    x, mx, count = ctx.saved_tensors
    g_mean = torch.zeros_like(mx) if g_mean is None else g_mean
    g_max = torch.zeros_like(mx) if g_max is None else g_max
    return torch.ops.covseg._cbam_channel_stats_backward(g_mean, g_max, x, mx, count)


_channel_stats_op.register_autograd(_stats_backward, setup_context=_stats_setup)


# ---------------------------------------------------------------- covseg::cbam_spatial_pool
@triton_op("covseg::cbam_spatial_pool", mutates_args=())
def _spatial_pool_op(x: Tensor, ca: Tensor) -> tuple[Tensor, Tensor]:
    return _impl("cbam_spatial_pool", x)(x, ca)


@triton_op("covseg::_cbam_spatial_pool_backward", mutates_args=())
def _spatial_pool_backward_op(g_pooled: Tensor, x: Tensor, ca: Tensor, pooled: Tensor, count: Tensor
                              ) -> tuple[Tensor, Tensor]:
    return _impl("cbam_spatial_pool", x, backward=True)(g_pooled, x, ca, pooled, count)


@_spatial_pool_op.register_fake
def _(x, ca):
    b, _, h, w = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty((b, 2, h, w), dtype=acc), x.new_empty((b, h, w), dtype=torch.int32)


@_spatial_pool_backward_op.register_fake
def _(g_pooled, x, ca, pooled, count):
    return torch.empty_like(x), torch.empty_like(ca)


def _pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], output[0], output[1])


def _pool_backward(ctx, g_pooled, _g_count):
    x, ca, pooled, count = ctx.saved_tensors
    g_pooled = torch.zeros_like(pooled) if g_pooled is None else g_pooled
    return torch.ops.covseg._cbam_spatial_pool_backward(g_pooled, x, ca, pooled, count)


_spatial_pool_op.register_autograd(_pool_backward, setup_context=_pool_setup)


# ---------------------------------------------------------------- covseg::cbam_apply
@triton_op("covseg::cbam_apply", mutates_args=())
def _apply_op(x: Tensor, ca: Tensor, sa: Tensor) -> Tensor:
    return _impl("cbam_apply", x)(x, ca, sa)


@triton_op("covseg::_cbam_apply_backward", mutates_args=())
def _apply_backward_op(g: Tensor, x: Tensor, ca: Tensor, sa: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("cbam_apply", x, backward=True)(g, x, ca, sa)


@_apply_op.register_fake
def _(x, ca, sa):
    return torch.empty_like(x)


@_apply_backward_op.register_fake
def _(g, x, ca, sa):
    return torch.empty_like(x), torch.empty_like(ca), torch.empty_like(sa)


def _apply_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _apply_backward(ctx, g):
    x, ca, sa = ctx.saved_tensors
    return torch.ops.covseg._cbam_apply_backward(g, x, ca, sa)


_apply_op.register_autograd(_apply_backward, setup_context=_apply_setup)


# ---------------------------------------------------------------- fused block backward: passes A, B, C
@triton_op("covseg::_cbam_apply_backward_reduce", mutates_args=())
def _apply_backward_reduce_op(g: Tensor, x: Tensor, ca: Tensor, sa: Tensor) -> tuple[Tensor, Tensor]:
    return _impl("_cbam_apply_backward_reduce", x)(g, x, ca, sa)


@_apply_backward_reduce_op.register_fake
def _(g, x, ca, sa):
    b, c, h, w = x.shape
    return x.new_empty((b, c), dtype=_acc(x)), x.new_empty((b, 1, h, w), dtype=_acc(x))


@triton_op("covseg::_cbam_spatial_pool_backward_reduce", mutates_args=())
def _spatial_pool_backward_reduce_op(g_pooled: Tensor, x: Tensor, ca: Tensor, pooled: Tensor, count: Tensor
                                     ) -> Tensor:
    return _impl("_cbam_spatial_pool_backward_reduce", x)(g_pooled, x, ca, pooled, count)


@_spatial_pool_backward_reduce_op.register_fake
def _(g_pooled, x, ca, pooled, count):
    return x.new_empty(tuple(x.shape[:2]), dtype=_acc(x))


@triton_op("covseg::_cbam_block_backward_x", mutates_args=())
def _block_backward_x_op(g: Tensor, x: Tensor, ca: Tensor, sa: Tensor, g_pooled: Tensor, pooled: Tensor,
                         pool_count: Tensor, g_mean: Tensor, g_max: Tensor, mx: Tensor, stats_count: Tensor) -> Tensor:
    return _impl("_cbam_block_backward_x", x)(g, x, ca, sa, g_pooled, pooled, pool_count, g_mean, g_max, mx,
                                              stats_count)


@_block_backward_x_op.register_fake
def _(g, x, ca, sa, g_pooled, pooled, pool_count, g_mean, g_max, mx, stats_count):
    return torch.empty_like(x)


# ---------------------------------------------------------------- public functions
def _check_x(op: str, x: Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: x dtype must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: C, H and W must be ≥ 1, got shape {tuple(x.shape)}")


def _check_small(op: str, what: str, t: Tensor, shape: tuple[int, ...], x: Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {what} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {what} must have shape {shape} for x of shape {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {what} must be floating point, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{op}: {what} is on {t.device} but x is on {x.device}")


def cbam_channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and max over H, W in one pass.

    Args:
        x: (B, C, H, W) float32/float16/bfloat16/float64, NCHW or channels_last.
    Returns:
        (mean, max), each (B, C) float32 (float64 for float64 x). Differentiable (max gradient shared
        evenly among ties, as ``torch.amax``).
    Raises:
        ValueError / TypeError: not 4-D, empty C/H/W, non-float dtype.
    """
    _check_x("cbam_channel_stats", x)
    mean, mx, _ = torch.ops.covseg.cbam_channel_stats(x)
    return mean, mx


def cbam_spatial_pool(x: Tensor, ca: Tensor) -> Tensor:
    """[max over C, mean over C] of x·ca without materialising x·ca.

    Args:
        x: (B, C, H, W); ca: (B, C) channel gate, floating point, same device.
    Returns:
        (B, 2, H, W) float32 (float64 for float64 x), channel 0 the max, channel 1 the mean.
    Raises:
        ValueError / TypeError: bad shapes, dtypes or devices.
    """
    _check_x("cbam_spatial_pool", x)
    _check_small("cbam_spatial_pool", "ca", ca, tuple(x.shape[:2]), x)
    return torch.ops.covseg.cbam_spatial_pool(x, ca)[0]


def cbam_apply(x: Tensor, ca: Tensor, sa: Tensor) -> Tensor:
    """out = x · ca[:, :, None, None] · sa, fp32 math, rounded once to x.dtype (x's memory layout).

    Args:
        x: (B, C, H, W); ca: (B, C); sa: (B, 1, H, W); floating point, same device.
    Raises:
        ValueError / TypeError: bad shapes, dtypes or devices.
    """
    _check_x("cbam_apply", x)
    _check_small("cbam_apply", "ca", ca, tuple(x.shape[:2]), x)
    _check_small("cbam_apply", "sa", sa, (x.shape[0], 1, x.shape[2], x.shape[3]), x)
    return torch.ops.covseg.cbam_apply(x, ca, sa)


def _check_weight(what: str, t, x: Tensor) -> None:
    """A CBAM weight: a float tensor on x's device, in x's dtype (any float dtype under autocast, which casts)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"cbam: {what} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"cbam: {what} must be floating point, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"cbam: {what} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"cbam: {what} is {t.dtype} but x is {x.dtype} (outside autocast the weights must have "
                        f"x's dtype)")


def _check_block_weights(x: Tensor, w1, b1, w2, b2, conv_weight, conv_bias) -> None:
    c = x.shape[1]
    named = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "conv_weight": conv_weight}
    if conv_bias is not None:
        named["conv_bias"] = conv_bias
    for what, t in named.items():
        _check_weight(what, t, x)
    if w1.dim() != 2 or w1.shape[0] < 1 or w1.shape[1] != c or tuple(w2.shape) != (c, w1.shape[0]):
        raise ValueError(f"cbam: MLP weights {tuple(w1.shape)}, {tuple(w2.shape)} do not fit C={c} "
                         f"(w1 must be (h, C), w2 (C, h), h ≥ 1)")
    hidden = w1.shape[0]
    if tuple(b1.shape) != (hidden,):
        raise ValueError(f"cbam: b1 must have shape ({hidden},) for w1 of shape {tuple(w1.shape)}, "
                         f"got {tuple(b1.shape)}")
    if tuple(b2.shape) != (c,):
        raise ValueError(f"cbam: b2 must have shape ({c},) for C={c}, got {tuple(b2.shape)}")
    k = conv_weight.shape[-1] if conv_weight.dim() == 4 else 0
    if conv_weight.dim() != 4 or tuple(conv_weight.shape[:3]) != (1, 2, k) or k % 2 == 0:
        raise ValueError(f"cbam: conv_weight must be (1, 2, k, k), square with k odd, got {tuple(conv_weight.shape)}")
    if conv_bias is not None and tuple(conv_bias.shape) != (1,):
        raise ValueError(f"cbam: conv_bias must have shape (1,), got {tuple(conv_bias.shape)}")


def cbam(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, conv_weight: Tensor,
         batch_norm: Optional[Callable[[Tensor], Tensor]] = None, conv_bias: Optional[Tensor] = None) -> Tensor:
    """The whole CBAM block on the fused ops (same result and gradients as ``reference.cbam.cbam``).

    Forward: three passes over x (4E); backward: passes A, B, C (≈6E, grad_x written once), see the module
    docstring. Gradients flow to x, the MLP weights and biases, ``conv_weight``, ``conv_bias`` and whatever
    ``batch_norm`` differentiates (its weight and bias).

    Args:
        x: (B, C, H, W). w1 (h, C), b1 (h,), w2 (C, h), b2 (C,): the shared MLP.
        conv_weight: (1, 2, k, k) spatial conv (k odd); conv_bias: its optional (1,) bias.
        batch_norm: applied to the (B, 1, H, W) conv output: an ``nn.BatchNorm2d(1)`` (it then uses batch
            statistics and updates its running statistics in training, running statistics in eval, exactly
            as in the reference) or e.g. ``functools.partial(F.batch_norm, ...)``. None: no normalisation,
            e.g. an eval-mode BatchNorm folded into ``conv_weight`` and ``conv_bias`` (as ``nn.CBAM`` does).
        The weights are on x's device and in x's dtype (any float dtype under autocast).
    Returns:
        (B, C, H, W) in x.dtype and x's memory layout.
    Raises:
        ValueError / TypeError: bad x; MLP weights / biases or conv weight / bias of the wrong shape, dtype or
            device; a ``batch_norm`` that does not return (B, 1, H, W).
    """
    _check_x("cbam", x)
    _check_block_weights(x, w1, b1, w2, b2, conv_weight, conv_bias)
    ca, pooled, g_port, sa_port, gca_port = _GateAndPool.apply(x, w1, b1, w2, b2)
    # conv, BatchNorm and σ stay in autograd: the BN is the caller's own (module or function)
    s = F.conv2d(pooled, conv_weight, conv_bias, padding=conv_weight.shape[-1] // 2)
    sa = torch.sigmoid(s if batch_norm is None else batch_norm(s))
    _check_small("cbam", "batch_norm output", sa, (x.shape[0], 1, x.shape[2], x.shape[3]), x)
    return _ApplyGates.apply(x, ca, sa, g_port, sa_port, gca_port)
