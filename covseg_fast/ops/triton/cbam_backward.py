"""Triton backward kernels of the CBAM ops and their launchers (layout and max ties: see cbam.py).

Each forward op's own backward (``channel_stats_backward``, ``spatial_pool_backward``,
``apply_backward``: autograd of the ops used on their own) and the three passes of the fused block
backward (ops/cbam.py): A (``apply_backward_reduce``) and B (``spatial_pool_backward_reduce``) write
only (B, C) and (B, HW) reductions, C (``block_backward_x``) writes grad_x once. Partial grad_ca sums
per pixel block are reduced by torch (deterministic, no atomics). All re-exported by cbam.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .cbam_tiles import Tiling, _dense, _strides


@triton.jit
def _cbam_stats_backward_kernel(x_ptr, gmean_ptr, gmax_ptr, mx_ptr, cnt_ptr, gx_ptr, C, HW, inv_hw,
                          sxb, sxc, sxhw, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """grad_x[b, c, p] = g_mean[b, c]/HW + g_max[b, c]·[x = max[b, c]]/count[b, c].

    grid (cdiv(HW, BLOCK_HW), B, cdiv(C, BLOCK_C)); grad_x has x's strides.
    """
    b = tl.program_id(1).to(tl.int64)
    offs_hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_hw < HW)[None, :]
    small = b * C + offs_c
    gmean = tl.load(gmean_ptr + small, mask=mask_c, other=0.0) * inv_hw
    mx = tl.load(mx_ptr + small, mask=mask_c, other=0.0)
    cnt = tl.maximum(tl.load(cnt_ptr + small, mask=mask_c, other=1), 1).to(tl.float32)
    gmax = tl.load(gmax_ptr + small, mask=mask_c, other=0.0) / cnt
    off = b * sxb + offs_c[:, None].to(tl.int64) * sxc + offs_hw[None, :].to(tl.int64) * sxhw
    v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    g = gmean[:, None] + tl.where(v == mx[:, None], gmax[:, None], 0.0)
    tl.store(gx_ptr + off, g.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cbam_pool_backward_kernel(x_ptr, ca_ptr, pooled_ptr, cnt_ptr, gp_ptr, gx_ptr, pca_ptr, C, HW, NB, inv_c,
                         sxb, sxc, sxhw, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, WRITE_GX: tl.constexpr):
    """g₁ = g_max·[x·ca = max]/count + g_mean/C;  grad_x = g₁·ca;  partial grad_ca = Σ_(pixel block) g₁·x.

    grid (NB = cdiv(HW, BLOCK_HW), B); partial grad_ca goes to pca[b, c, block] ((B, C, NB)), summed
    over blocks by the launcher (deterministic, no atomics). gp is (B, 2, HW) contiguous, any float dtype.
    WRITE_GX = False is pass B of the fused block backward: only grad_ca, x read once, nothing full-size written.
    """
    b = tl.program_id(1).to(tl.int64)
    blk = tl.program_id(0)
    offs_hw = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_hw = offs_hw < HW
    mx = tl.load(pooled_ptr + (b * 2) * HW + offs_hw, mask=mask_hw, other=0.0)
    cnt = tl.maximum(tl.load(cnt_ptr + b * HW + offs_hw, mask=mask_hw, other=1), 1).to(tl.float32)
    gmax = tl.load(gp_ptr + (b * 2) * HW + offs_hw, mask=mask_hw, other=0.0).to(tl.float32) / cnt
    gmean = tl.load(gp_ptr + (b * 2 + 1) * HW + offs_hw, mask=mask_hw, other=0.0).to(tl.float32) * inv_c
    pix = b * sxb + offs_hw[None, :].to(tl.int64) * sxhw
    for start in range(0, C, BLOCK_C):
        offs_c = start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        ca = tl.load(ca_ptr + b * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        off = pix + offs_c[:, None].to(tl.int64) * sxc
        v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        g1 = tl.where(v * ca[:, None] == mx[None, :], gmax[None, :], 0.0) + gmean[None, :]
        g1 = tl.where(mask, g1, 0.0)
        if WRITE_GX:
            tl.store(gx_ptr + off, (g1 * ca[:, None]).to(gx_ptr.dtype.element_ty), mask=mask)
        tl.store(pca_ptr + (b * C + offs_c) * NB + blk, tl.sum(g1 * v, axis=1), mask=mask_c)


@triton.jit
def _cbam_apply_backward_kernel(x_ptr, g_ptr, ca_ptr, sa_ptr, gx_ptr, pca_ptr, gsa_ptr, C, HW, NB,
                          sxb, sxc, sxhw, sgb, sgc, sghw, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                          WRITE_GX: tl.constexpr):
    """grad_x = g·ca·sa;  grad_sa[b, p] = Σ_c g·x·ca;  partial grad_ca[b, c, block] = Σ_(pixel block) g·x·sa.

    grid (NB = cdiv(HW, BLOCK_HW), B): each program loops over all channels of its pixel block, so
    grad_sa is complete in-program (fp32, (B, HW)); pca is (B, C, NB) fp32, summed by the launcher.
    g has its own strides; grad_x has x's. WRITE_GX = False is pass A of the fused block backward
    (reads g and x, writes only the (B, C) and (B, HW) reductions).
    """
    b = tl.program_id(1).to(tl.int64)
    blk = tl.program_id(0)
    offs_hw = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_hw = offs_hw < HW
    sa = tl.load(sa_ptr + b * HW + offs_hw, mask=mask_hw, other=0.0).to(tl.float32)
    gsa = tl.zeros([BLOCK_HW], dtype=tl.float32)
    hw64 = offs_hw[None, :].to(tl.int64)
    for start in range(0, C, BLOCK_C):
        offs_c = start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        c64 = offs_c[:, None].to(tl.int64)
        ca = tl.load(ca_ptr + b * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        v = tl.load(x_ptr + b * sxb + c64 * sxc + hw64 * sxhw, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * sgb + c64 * sgc + hw64 * sghw, mask=mask, other=0.0).to(tl.float32)
        gx = g * ca[:, None]
        if WRITE_GX:
            tl.store(gx_ptr + b * sxb + c64 * sxc + hw64 * sxhw, (gx * sa[None, :]).to(gx_ptr.dtype.element_ty),
                     mask=mask)
        gsa += tl.sum(gx * v, axis=0)
        tl.store(pca_ptr + (b * C + offs_c) * NB + blk, tl.sum(g * v * sa[None, :], axis=1), mask=mask_c)
    tl.store(gsa_ptr + b * HW + offs_hw, gsa, mask=mask_hw)


@triton.jit
def _cbam_block_backward_x_kernel(x_ptr, g_ptr, ca_ptr, sa_ptr, pooled_ptr, pcnt_ptr, gp_ptr, gmean_ptr, gmax_ptr, mx_ptr,
                            ccnt_ptr, gx_ptr, C, HW, inv_c, inv_hw, sxb, sxc, sxhw, sgb, sgc, sghw,
                            BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Pass C of the fused block backward: grad_x written once, the three ops' grad_x terms summed in registers.

        g₁     = g_max_C[p]·[x·ca = max_C[p]]/count_C[p] + g_mean_C[p]/C        (spatial pool)
        grad_x = ca[c]·(g·sa[p] + g₁) + g_mean_HW[c]/HW + g_max_HW[c]·[x = max_HW[c]]/count_HW[c]

    grid (cdiv(HW, BLOCK_HW), B, cdiv(C, BLOCK_C)); reads g (own strides) and x, writes grad_x with x's strides.
    Per-pixel inputs sa (B, HW), pooled (B, 2, HW) fp32, count_C (B, HW), g_pooled (B, 2, HW) and per-channel
    ca, g_mean_HW, g_max_HW, max_HW, count_HW (B, C) are contiguous. x·ca is formed as in _cbam_pool_kernel
    (cbam.py; fp32 product), so the max test picks exactly the elements the forward counted.
    """
    b = tl.program_id(1).to(tl.int64)
    offs_hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask_hw = offs_hw < HW
    mask = mask_c[:, None] & mask_hw[None, :]
    small = b * C + offs_c
    ca = tl.load(ca_ptr + small, mask=mask_c, other=0.0).to(tl.float32)
    gmean = tl.load(gmean_ptr + small, mask=mask_c, other=0.0).to(tl.float32) * inv_hw
    mx = tl.load(mx_ptr + small, mask=mask_c, other=0.0)
    ccnt = tl.maximum(tl.load(ccnt_ptr + small, mask=mask_c, other=1), 1).to(tl.float32)
    gmax = tl.load(gmax_ptr + small, mask=mask_c, other=0.0).to(tl.float32) / ccnt
    pix = b * HW + offs_hw
    sa = tl.load(sa_ptr + pix, mask=mask_hw, other=0.0).to(tl.float32)
    pmax = tl.load(pooled_ptr + b * 2 * HW + offs_hw, mask=mask_hw, other=0.0)
    pcnt = tl.maximum(tl.load(pcnt_ptr + pix, mask=mask_hw, other=1), 1).to(tl.float32)
    gpmax = tl.load(gp_ptr + b * 2 * HW + offs_hw, mask=mask_hw, other=0.0).to(tl.float32) / pcnt
    gpmean = tl.load(gp_ptr + (b * 2 + 1) * HW + offs_hw, mask=mask_hw, other=0.0).to(tl.float32) * inv_c
    c64 = offs_c[:, None].to(tl.int64)
    hw64 = offs_hw[None, :].to(tl.int64)
    off = b * sxb + c64 * sxc + hw64 * sxhw
    v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + b * sgb + c64 * sgc + hw64 * sghw, mask=mask, other=0.0).to(tl.float32)
    g1 = tl.where(v * ca[:, None] == pmax[None, :], gpmax[None, :], 0.0) + gpmean[None, :]
    gx = ca[:, None] * (g * sa[None, :] + g1) + gmean[:, None] + tl.where(v == mx[:, None], gmax[:, None], 0.0)
    tl.store(gx_ptr + off, gx.to(gx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers (called inside the torch.library.triton_op bodies, so kernels go through wrap_triton)
# ----------------------------------------------------------------------------------------------
def channel_stats_backward(g_mean, g_max, x, mx, cnt) -> torch.Tensor:
    """grad_x (x.dtype, x's layout) of the channel stats."""
    x = _dense(x)
    t = Tiling(x)
    gx = torch.empty_like(x)
    if t.b > 0:
        wrap_triton(_cbam_stats_backward_kernel)[t.grid3](
            x, g_mean.float().contiguous(), g_max.float().contiguous(), mx.contiguous(), cnt.contiguous(), gx,
            t.c, t.hw, 1.0 / t.hw, *_strides(x), BLOCK_C=t.bc, BLOCK_HW=t.bhw)
    return gx


def spatial_pool_backward(g_pooled, x, ca, pooled, cnt) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x in x.dtype / x's layout, grad_ca in ca.dtype) of the spatial pool."""
    x = _dense(x)
    t = Tiling(x, per_pixel=True)
    gx = torch.empty_like(x)
    pca = x.new_empty((t.b, t.c, t.nb), dtype=torch.float32)
    if t.b > 0:
        wrap_triton(_cbam_pool_backward_kernel)[t.grid2](
            x, ca.contiguous(), pooled.contiguous(), cnt.contiguous(), g_pooled.contiguous(), gx, pca,
            t.c, t.hw, t.nb, 1.0 / t.c, *_strides(x), BLOCK_C=t.bc, BLOCK_HW=t.bhw, WRITE_GX=True)
    return gx, pca.sum(dim=-1).to(ca.dtype)


def apply_backward(g, x, ca, sa) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_ca, grad_sa) of x·ca·sa, each in its input's dtype."""
    x, g = _dense(x), _dense(g)
    t = Tiling(x, per_pixel=True)
    gx = torch.empty_like(x)
    pca = x.new_empty((t.b, t.c, t.nb), dtype=torch.float32)
    gsa = x.new_empty((t.b, 1, t.h, t.w), dtype=torch.float32)
    if t.b > 0:
        wrap_triton(_cbam_apply_backward_kernel)[t.grid2](
            x, g, ca.contiguous(), sa.contiguous(), gx, pca, gsa, t.c, t.hw, t.nb,
            *_strides(x), *_strides(g), BLOCK_C=t.bc, BLOCK_HW=t.bhw, WRITE_GX=True)
    return gx, pca.sum(dim=-1).to(ca.dtype), gsa.to(sa.dtype)


# ---- the fused block backward: passes A, B (reductions only) and C (grad_x written once)
def apply_backward_reduce(g, x, ca, sa) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass A: (grad_ca (B, C), grad_sa (B, 1, H, W)) of x·ca·sa, fp32; reads g and x, writes no grad_x."""
    x, g = _dense(x), _dense(g)
    t = Tiling(x, per_pixel=True)
    pca = x.new_empty((t.b, t.c, t.nb), dtype=torch.float32)
    gsa = x.new_empty((t.b, 1, t.h, t.w), dtype=torch.float32)
    if t.b > 0:
        wrap_triton(_cbam_apply_backward_kernel)[t.grid2](
            x, g, ca.contiguous(), sa.contiguous(), pca, pca, gsa, t.c, t.hw, t.nb,  # gx_ptr unused: WRITE_GX=False
            *_strides(x), *_strides(g), BLOCK_C=t.bc, BLOCK_HW=t.bhw, WRITE_GX=False)
    return pca.sum(dim=-1), gsa


def spatial_pool_backward_reduce(g_pooled, x, ca, pooled, cnt) -> torch.Tensor:
    """Pass B: grad_ca (B, C) fp32 of the spatial pool; reads x once, writes no grad_x."""
    x = _dense(x)
    t = Tiling(x, per_pixel=True)
    pca = x.new_empty((t.b, t.c, t.nb), dtype=torch.float32)
    if t.b > 0:
        wrap_triton(_cbam_pool_backward_kernel)[t.grid2](
            x, ca.contiguous(), pooled.contiguous(), cnt.contiguous(), g_pooled.contiguous(), pca, pca,
            t.c, t.hw, t.nb, 1.0 / t.c, *_strides(x), BLOCK_C=t.bc, BLOCK_HW=t.bhw, WRITE_GX=False)  # gx_ptr unused
    return pca.sum(dim=-1)


def block_backward_x(g, x, ca, sa, g_pooled, pooled, pool_cnt, g_mean, g_max, mx, stats_cnt) -> torch.Tensor:
    """Pass C: grad_x of the whole block (x.dtype, x's layout), one read of g and x, one write."""
    x, g = _dense(x), _dense(g)
    t = Tiling(x)
    gx = torch.empty_like(x)
    if t.b > 0:
        wrap_triton(_cbam_block_backward_x_kernel)[t.grid3](
            x, g, ca.contiguous(), sa.contiguous(), pooled.contiguous(), pool_cnt.contiguous(),
            g_pooled.contiguous(), g_mean.contiguous(), g_max.contiguous(), mx.contiguous(), stats_cnt.contiguous(),
            gx, t.c, t.hw, 1.0 / t.c, 1.0 / t.hw, *_strides(x), *_strides(g), BLOCK_C=t.bc, BLOCK_HW=t.bhw)
    return gx
