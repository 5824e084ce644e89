"""Triton ``covseg::strip_conv`` (SegNeXt MSCA depthwise part) and its backward: picks the schedule, runs it.

Forward (``strip_conv_forward``), two schedules, chosen by ``COVSEG_STRIP_CONV_SCHEDULE``:

- ``single`` (default): one launch, ``strip_conv_single.py``; a0 and the horizontal strips live in an
  L2-resident per-program scratch, HBM sees x and s (≈ 2E–3E bytes in bf16), at ≈ 1.3× the MACs
  (halo recomputation).
- ``split``: three launches through HBM, ``strip_conv_split.py``, kept as the benchmark's comparison
  point: a0 = b0 + dw_{k0×k0}(x); all horizontal strips t_i = bh_i + h_i(a0) in one pass;
  s = a0 + Σ_i (bv_i + v_i(t_i)) in one pass: 22E bytes in bf16 versus ≈ 60E for the eager 13-kernel
  chain (KERNELS.md §2.2).
Both take at most 3 strip branches (more fall back to the reference); with none, the forward is the
k0×k0 depthwise conv alone (``dwconv``, one launch). Neither fuses the 1×1 conv or the multiplication
with the input: the 1×1 is a GEMM over all C channels of a pixel, which a depthwise tile (one or a few
channels) does not hold; cuBLAS/cuDNN does it as an epilogue-free GEMM.

Backward (``strip_conv_backward``), the same two schedules:

- ``single`` (default): one launch, ``strip_conv_single_backward.py``; each tile recomputes a0, t_i,
  gt_i and ga0 in its scratch and writes gx plus per-tile weight/bias-gradient partials (summed by
  torch); HBM sees g, x and gx (≈ 3E–4E bytes in bf16, halo re-reads mostly from L2).
- ``split`` (and any backward without strip branches): ``strip_conv_split.py``; recompute a0 and the
  t_i, then the transposed convs with the same kernels and flipped weights, weight grads from per-tile
  partial sums: ≈ 50E bytes. Backward intermediates are fp32 in both.

This module holds no kernel. The split schedule's launch wrappers (``dwconv``, ``dwconv_wgrad``,
``strips_spread``, ``strips_gather``) and ``MAX_BRANCHES`` are re-exported here.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import knobs
from .strip_conv_single import strip_conv_single_pass
from .strip_conv_single_backward import strip_conv_single_pass_backward, tap_layout
from .strip_conv_split import (MAX_BRANCHES, _pad3, dwconv, dwconv_wgrad, split_backward,  # noqa: F401
                               split_forward, strips_gather, strips_spread)

SCHEDULES = ("single", "split")


def forward_schedule() -> str:
    """The forward schedule: ``COVSEG_STRIP_CONV_SCHEDULE`` = ``single`` (default: one launch,
    strip_conv_single.py) or ``split`` (three launches through HBM, strip_conv_split.py). Both are benchmarked."""
    name = (knobs.value("COVSEG_STRIP_CONV_SCHEDULE") or "single").strip().lower() or "single"
    if name not in SCHEDULES:
        raise ValueError(f"COVSEG_STRIP_CONV_SCHEDULE={name!r}: expected one of {', '.join(SCHEDULES)}")
    return name


def strip_conv_forward(x, w0, b0, wh, bh, wv, bv, out: torch.Tensor, schedule: Optional[str] = None
                       ) -> torch.Tensor:
    """s = a0 + Σ_i v_i(h_i(a0)) into ``out`` (any layout, any float dtype), ≤ 3 branches.

    ``single``: one launch, a0 and the t_i kept in an L2-resident scratch (strip_conv_single.py).
    ``split``: 3 launches: a0 = dw(x) → {t_i = h_i(a0)} in one pass → s = a0 + Σ v_i(t_i) in one pass
    (strip_conv_split.py).
    """
    if len(wh) == 0:
        return dwconv(x, w0, b0, out)
    if (schedule or forward_schedule()) == "single":
        wf, bf, ks = _pad3(wh, bh, flip=False)
        vf, vbf, _ = _pad3(wv, bv, flip=False)
        return strip_conv_single_pass(x, w0, b0, wf, bf, vf, vbf, ks, out)
    return split_forward(x, w0, b0, wh, bh, wv, bv, out)


def strip_conv_backward(grad, x, w0, b0, wh, bh, wv, bv) -> list[torch.Tensor]:
    """[gx, gw0, gb0, *gwh, *gbh, *gwv, *gbv] of s = strip_conv(x, ...); recomputes a0 and each t_i.

    With g = ∂L/∂s:  gt_i = v_iᵀ(g), ∂wv_i = corr(g, t_i), ∂bv_i = Σg;  ga0 = g + Σ_i h_iᵀ(gt_i),
    ∂wh_i = corr(gt_i, a0), ∂bh_i = Σ gt_i;  gx = c0ᵀ(ga0), ∂w0 = corr(ga0, x), ∂b0 = Σ ga0.
    ``single`` with ≥ 1 strip branch: one launch (strip_conv_single_backward.py) plus a sum of its
    partials; otherwise the split schedule (strip_conv_split.py).
    """
    if len(wh) and forward_schedule() == "single":
        return _single_pass_backward(grad, x, w0, b0, wh, bh, wv, bv)
    return split_backward(grad, x, w0, b0, wh, bh, wv, bv)


def _single_pass_backward(grad, x, w0, b0, wh, bh, wv, bv) -> list[torch.Tensor]:
    """The same gradients from one launch (strip_conv_single_backward.py) plus a sum of its partials."""
    c, k0 = x.shape[1], w0.shape[-1]
    wf, bf, ks = _pad3(wh, bh, flip=False)
    vf, _, _ = _pad3(wv, bv, flip=False)
    gx, sums = strip_conv_single_pass_backward(grad, x, w0, b0, wf, bf, vf, ks)
    lay = tap_layout(k0, ks)
    # every gradient a copy: custom-op outputs may not alias each other (they are all slices of sums)
    gw0 = sums[:, :k0 * k0].reshape(c, 1, k0, k0).to(w0.dtype, copy=True)
    gb0 = sums[:, lay["b0"]].to(b0.dtype, copy=True)
    gwh = [sums[:, lay[f"wh{i}"]:lay[f"wh{i}"] + k].reshape(c, 1, 1, k).to(wh[i].dtype, copy=True) for i, k in enumerate(ks[:len(wh)])]
    gwv = [sums[:, lay[f"wv{i}"]:lay[f"wv{i}"] + k].reshape(c, 1, k, 1).to(wv[i].dtype, copy=True) for i, k in enumerate(ks[:len(wv)])]
    gbh = [sums[:, lay[f"bh{i}"]].to(bh[i].dtype, copy=True) for i in range(len(bh))]
    gbv = [sums[:, lay["bv"]].to(bv[i].dtype, copy=True) for i in range(len(bv))]
    return [gx, gw0, gb0, *gwh, *gbh, *gwv, *gbv]
