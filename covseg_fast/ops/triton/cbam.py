"""Triton kernels of the CBAM ops (spec: covseg_fast/ops/reference/cbam.py): the forward passes.

Here: the three forward kernels and their launchers (``channel_stats``, ``spatial_pool``, ``apply``).
The backward kernels and launchers (each op's own backward and the fused block backward's passes A, B,
C) are in ``cbam_backward.py`` and re-exported here, so this module serves every CBAM op; the tile
choices both share are in ``cbam_tiles.py``.

Layout: every full-size tensor (x, grad_out, out, grad_x) is read as (B, C, HW) through
(stride_b, stride_c, stride_hw); NCHW and channels_last both flatten H, W into one HW axis
(the launchers make other layouts contiguous first). Small tensors (ca (B, C), sa (B, HW),
pooled (B, 2, HW), counts) are contiguous. All math is fp32; full-size outputs are rounded
once to x.dtype. Tiles are [BLOCK_C, BLOCK_HW].

Max ties: a running (max, count) pair is merged block by block
    m' = max(m, bm);  n' = n·[m = m'] + bn·[bm = m']
so the backward can share a max's gradient evenly among ties, as torch.amax does. Every max propagates
NaN, as torch.amax does (Triton's max skips it): a NaN max has count 0 (NaN equals nothing).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# the backward launchers, re-exported: this module serves every CBAM op
from .cbam_backward import (apply_backward, apply_backward_reduce, block_backward_x,  # noqa: F401
                            channel_stats_backward, spatial_pool_backward, spatial_pool_backward_reduce)
from .cbam_tiles import Tiling, _dense, _strides, stats_splits
from .device import sm_count


@triton.jit
def _nan_max(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _cbam_stats_kernel(x_ptr, psum_ptr, pmax_ptr, pcnt_ptr, C, HW, S, HW_PER_SPLIT, scale,
                         sxb, sxc, sxhw, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Per-channel partial Σ, max and #max over one HW split.

    grid (B, cdiv(C, BLOCK_C), S): program (b, cb, s) loops HW in [s·HW_PER_SPLIT, (s+1)·HW_PER_SPLIT)
    and writes scale·Σ, max, #max to psum/pmax/pcnt[b, c, s] ((B, C, S) contiguous); the launcher merges
    the S splits (with S = 1 it passes scale = 1/HW and the partials are the final mean/max/count).
    """
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    mask_c = offs_c < C
    lo = split * HW_PER_SPLIT
    hi = tl.minimum(lo + HW_PER_SPLIT, HW)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    m = tl.full([BLOCK_C], float("-inf"), dtype=tl.float32)
    n = tl.zeros([BLOCK_C], dtype=tl.int32)
    base = x_ptr + b * sxb + offs_c[:, None].to(tl.int64) * sxc
    for start in range(lo, hi, BLOCK_HW):
        offs_hw = start + tl.arange(0, BLOCK_HW)
        mask = mask_c[:, None] & (offs_hw < hi)[None, :]
        v = tl.load(base + offs_hw[None, :].to(tl.int64) * sxhw, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(v, axis=1)
        vm = tl.where(mask, v, float("-inf"))
        bm = tl.reduce(vm, 1, _nan_max)
        bn = tl.sum(((vm == bm[:, None]) & mask).to(tl.int32), axis=1)
        new_m = _nan_max(m, bm)
        n = tl.where(m == new_m, n, 0) + tl.where(bm == new_m, bn, 0)
        m = new_m
    out = (b * C + offs_c) * S + split
    tl.store(psum_ptr + out, acc * scale, mask=mask_c)
    tl.store(pmax_ptr + out, m, mask=mask_c)
    tl.store(pcnt_ptr + out, n, mask=mask_c)


@triton.jit
def _cbam_pool_kernel(x_ptr, ca_ptr, pooled_ptr, cnt_ptr, C, HW, inv_c, sxb, sxc, sxhw,
                BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """pooled[b, 0, p] = max_c x·ca, pooled[b, 1, p] = mean_c x·ca, cnt[b, p] = #max; x₁ is never stored.

    grid (cdiv(HW, BLOCK_HW), B): each program loops over all channels of its pixel block.
    """
    b = tl.program_id(1).to(tl.int64)
    offs_hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_hw = offs_hw < HW
    acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
    m = tl.full([BLOCK_HW], float("-inf"), dtype=tl.float32)
    n = tl.zeros([BLOCK_HW], dtype=tl.int32)
    base = x_ptr + b * sxb + offs_hw[None, :].to(tl.int64) * sxhw
    for start in range(0, C, BLOCK_C):
        offs_c = start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        ca = tl.load(ca_ptr + b * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        v = tl.load(base + offs_c[:, None].to(tl.int64) * sxc, mask=mask, other=0.0).to(tl.float32) * ca[:, None]
        acc += tl.sum(v, axis=0)
        vm = tl.where(mask, v, float("-inf"))
        bm = tl.reduce(vm, 0, _nan_max)
        bn = tl.sum(((vm == bm[None, :]) & mask).to(tl.int32), axis=0)
        new_m = _nan_max(m, bm)
        n = tl.where(m == new_m, n, 0) + tl.where(bm == new_m, bn, 0)
        m = new_m
    tl.store(pooled_ptr + (b * 2) * HW + offs_hw, m, mask=mask_hw)
    tl.store(pooled_ptr + (b * 2 + 1) * HW + offs_hw, acc * inv_c, mask=mask_hw)
    tl.store(cnt_ptr + b * HW + offs_hw, n, mask=mask_hw)


@triton.jit
def _cbam_apply_kernel(x_ptr, ca_ptr, sa_ptr, out_ptr, C, HW, sxb, sxc, sxhw,
                 BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """out[b, c, p] = x·ca[b, c]·sa[b, p]; grid (cdiv(HW, BLOCK_HW), B, cdiv(C, BLOCK_C)); out has x's strides."""
    b = tl.program_id(1).to(tl.int64)
    offs_hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask_hw = offs_hw < HW
    mask = mask_c[:, None] & mask_hw[None, :]
    ca = tl.load(ca_ptr + b * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    sa = tl.load(sa_ptr + b * HW + offs_hw, mask=mask_hw, other=0.0).to(tl.float32)
    off = b * sxb + offs_c[:, None].to(tl.int64) * sxc + offs_hw[None, :].to(tl.int64) * sxhw
    v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + off, (v * ca[:, None] * sa[None, :]).to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers (called inside the torch.library.triton_op bodies, so kernels go through wrap_triton)
# ----------------------------------------------------------------------------------------------
def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) → mean, max (B, C) fp32 and #max (B, C) int32; split-HW partials merged in PyTorch."""
    x = _dense(x)
    b, c, h, w = (int(s) for s in x.shape)  # tile and grid choices specialise on the shape
    hw = h * w
    bc, bhw, splits, per_split = stats_splits(b, c, hw, sm_count(x.device))
    ncb = triton.cdiv(c, bc)
    # One split: the kernel writes the final (B, C) mean/max/count (index (b·C + c)·1 + 0) in one launch.
    shape = (b, c) if splits == 1 else (b, c, splits)
    psum = x.new_empty(shape, dtype=torch.float32)
    pmax = x.new_empty(shape, dtype=torch.float32)
    pcnt = x.new_empty(shape, dtype=torch.int32)
    if b > 0:
        wrap_triton(_cbam_stats_kernel)[(b, ncb, splits)](
            x, psum, pmax, pcnt, c, hw, splits, per_split, 1.0 / hw if splits == 1 else 1.0, *_strides(x),
            BLOCK_C=bc, BLOCK_HW=bhw)
    if splits == 1:
        return psum, pmax, pcnt
    mx = pmax.amax(dim=-1)
    cnt = torch.where(pmax == mx[..., None], pcnt, 0).sum(dim=-1, dtype=torch.int32)
    return psum.sum(dim=-1) / hw, mx, cnt


def spatial_pool(x: torch.Tensor, ca: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W), (B, C) → pooled (B, 2, H, W) fp32 [max, mean] of x·ca, #max (B, H, W) int32."""
    x = _dense(x)
    t = Tiling(x, per_pixel=True)
    pooled = x.new_empty((t.b, 2, t.h, t.w), dtype=torch.float32)
    cnt = x.new_empty((t.b, t.h, t.w), dtype=torch.int32)
    if t.b > 0:
        wrap_triton(_cbam_pool_kernel)[t.grid2](
            x, ca.contiguous(), pooled, cnt, t.c, t.hw, 1.0 / t.c, *_strides(x), BLOCK_C=t.bc, BLOCK_HW=t.bhw)
    return pooled, cnt


def apply(x: torch.Tensor, ca: torch.Tensor, sa: torch.Tensor) -> torch.Tensor:
    """x·ca·sa in x.dtype and x's layout."""
    x = _dense(x)
    t = Tiling(x)
    out = torch.empty_like(x)
    if t.b > 0:
        wrap_triton(_cbam_apply_kernel)[t.grid3](
            x, ca.contiguous(), sa.contiguous(), out, t.c, t.hw, *_strides(x), BLOCK_C=t.bc, BLOCK_HW=t.bhw)
    return out
