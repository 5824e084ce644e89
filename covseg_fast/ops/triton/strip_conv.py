"""Triton kernels for ``covseg::strip_conv`` (SegNeXt MSCA depthwise part) and its backward.

Two generic depthwise kernels do all the work:

* ``_dwconv_kernel``: one depthwise KH×KW correlation with "same" zero padding, optional bias and an
  optional fp32 accumulator added in the epilogue (``out = acc + bias + conv(inp)``). The strip sum
  ``s = a0 + Σ v_i(h_i(a0))`` is built by running it for the 5×5, then per branch the 1×k into a
  fp32 scratch ``t`` and the k×1 with the running sum fused as its accumulator. The last vertical pass
  writes ``s`` directly in the output dtype and layout. The transposed convs of the backward are the
  same kernel with flipped weights (grad of a correlation wrt its input is a correlation with the
  flipped kernel and the same padding, since all kernels are odd).
* ``_dwconv_wgrad_kernel``: per-tile partial sums of ``gw[c, i, j] = Σ_{b,h,w} g[b,c,h,w] ·
  inp[b,c,h+i-KH//2, w+j-KW//2]``, reduced over tiles and batch afterwards in fp32 by torch.

What is fused and why: bias, the 4-way sum and the output cast are fused into the conv passes; the
horizontal/vertical pair of a branch is not fused into one pass because Triton has no cheap way to
shift a register tile, and recomputing the horizontal strip for every vertical tap costs k² instead
of 2k MACs (441 vs 42 for k = 21). Intermediates (a0, t, the running sum) are fp32, so the result is
more accurate than the reference run in bf16/fp16. All loads accept arbitrary strides, so NCHW and
channels_last inputs are read in place (no layout copy).

Only this module (and the ops/triton package) imports triton.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

@triton.jit
def _tile_coords(pid_t, C, W, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # program tile t -> (channel-block, tile-row, tile-col); pixels flattened row-major in the tile.
    n_tw = tl.cdiv(W, BLOCK_W)
    n_tc = tl.cdiv(C, BLOCK_C)
    tc = pid_t % n_tc
    rest = pid_t // n_tc
    th = rest // n_tw
    tw = rest % n_tw
    ch = tc * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = tl.arange(0, BLOCK_H * BLOCK_W)[None, :]
    rows = th * BLOCK_H + p // BLOCK_W
    cols = tw * BLOCK_W + p % BLOCK_W
    return ch, rows, cols


@triton.jit
def _dwconv_kernel(
    inp_ptr, w_ptr, bias_ptr, acc_ptr, out_ptr,
    C, H, W,
    s_ib, s_ic, s_ih, s_iw,
    s_ob, s_oc, s_oh, s_ow,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """out[b,c,h,w] = acc[b,c,h,w] + bias[c] + Σ_{i<KH, j<KW} w[c, i*KW+j] · inp[b,c,h+i-KH//2, w+j-KW//2].

    Layout: inp/out any strides (in elements, so NCHW and channels_last are read in place); w is
    (C, KH*KW) fp32 contiguous; bias (C,) fp32; acc is fp32 contiguous NCHW (B, C, H, W) and may
    alias out (each element is read then written by the same program). Out-of-image taps read 0.
    Grid: (B, cdiv(C, BLOCK_C) · cdiv(H, BLOCK_H) · cdiv(W, BLOCK_W)); program (b, t) computes a
    [BLOCK_C, BLOCK_H·BLOCK_W] tile (channels × flattened pixels) in fp32 registers, one pass over
    the KH·KW taps (each a masked shifted load + a per-channel weight vector), then one store.
    """
    b = tl.program_id(0).to(tl.int64)
    ch, rows, cols = _tile_coords(tl.program_id(1), C, W, BLOCK_C, BLOCK_H, BLOCK_W)
    cmask = ch < C
    in_base = inp_ptr + b * s_ib + ch * s_ic
    acc = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    for i in tl.static_range(KH):
        r = rows + (i - KH // 2)
        rmask = cmask & (r >= 0) & (r < H)
        for j in tl.static_range(KW):
            q = cols + (j - KW // 2)
            m = rmask & (q >= 0) & (q < W)
            v = tl.load(in_base + r * s_ih + q * s_iw, mask=m, other=0.0).to(tl.float32)
            wt = tl.load(w_ptr + ch * (KH * KW) + (i * KW + j), mask=cmask, other=0.0)
            acc += v * wt
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ch, mask=cmask, other=0.0)
    omask = cmask & (rows < H) & (cols < W)
    if HAS_ACC:
        acc += tl.load(acc_ptr + ((b * C + ch) * H + rows) * W + cols, mask=omask, other=0.0)
    tl.store(out_ptr + b * s_ob + ch * s_oc + rows * s_oh + cols * s_ow,
             acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _dwconv_wgrad_kernel(
    g_ptr, inp_ptr, part_ptr,
    C, H, W, n_tiles,
    s_gb, s_gc, s_gh, s_gw,
    s_ib, s_ic, s_ih, s_iw,
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """part[b, t, i*KW+j, c] = Σ_{(h,w) in tile t} g[b,c,h,w] · inp[b,c,h+i-KH//2, w+j-KW//2].

    Layout: g and inp any strides; part is fp32 contiguous (B, n_tiles, KH*KW, C) where n_tiles
    counts the spatial tiles (a program covers channels [tc·BLOCK_C, ...) of one spatial tile); the
    caller sums dims 0 and 1 to get the (KH*KW, C) weight gradient. Out-of-image inp taps read 0.
    Grid: as _dwconv_kernel; program (b, t) loads its g tile once and, per tap, reduces g · shifted
    inp over the pixel axis into a BLOCK_C vector (one vector store per tap).
    """
    b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    ch, rows, cols = _tile_coords(pid_t, C, W, BLOCK_C, BLOCK_H, BLOCK_W)
    spatial_t = pid_t // tl.cdiv(C, BLOCK_C)
    cmask = ch < C
    omask = cmask & (rows < H) & (cols < W)
    g = tl.load(g_ptr + b * s_gb + ch * s_gc + rows * s_gh + cols * s_gw, mask=omask, other=0.0).to(tl.float32)
    in_base = inp_ptr + b * s_ib + ch * s_ic
    cvec = tl.max(ch, axis=1)  # [BLOCK_C] channel indices
    out_base = part_ptr + (b * n_tiles + spatial_t) * (KH * KW * C)
    for i in tl.static_range(KH):
        r = rows + (i - KH // 2)
        rmask = omask & (r >= 0) & (r < H)
        for j in tl.static_range(KW):
            q = cols + (j - KW // 2)
            m = rmask & (q >= 0) & (q < W)
            v = tl.load(in_base + r * s_ih + q * s_iw, mask=m, other=0.0).to(tl.float32)
            tl.store(out_base + (i * KW + j) * C + cvec, tl.sum(g * v, axis=1), mask=cvec < C)


def _blocks(x: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_H, BLOCK_W): channels-heavy tiles for channels_last, row-heavy for NCHW."""
    c = x.shape[1]
    if x.device.type == "cpu":  # interpreter: few large programs (its cost is per program and per op)
        return min(16, triton.next_power_of_2(c)), 16, 32
    if x.stride(1) == 1 and c > 1:  # channels_last: vectorise along C
        return min(32, triton.next_power_of_2(c)), 4, 8
    return min(4, triton.next_power_of_2(c)), 8, 32


def _grid(x: torch.Tensor, bc: int, bh: int, bw: int) -> tuple[int, int]:
    b, c, h, w = x.shape
    return (b, triton.cdiv(c, bc) * triton.cdiv(h, bh) * triton.cdiv(w, bw))


def dwconv(inp: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
           acc: Optional[torch.Tensor] = None, flip: bool = False) -> torch.Tensor:
    """``out = acc + bias + depthwise_correlation(inp, weight)`` with "same" zero padding.

    inp, out: (B, C, H, W) any strides; weight (C, 1, KH, KW) odd sizes (flipped in both axes when
    ``flip``, giving the transposed conv); bias (C,) or None; acc fp32 contiguous (B, C, H, W) or None.
    """
    b, c, h, w = inp.shape
    kh, kw = weight.shape[-2:]
    if flip:
        weight = weight.flip(-1, -2)
    wf = weight.reshape(c, kh * kw).to(torch.float32).contiguous()
    bf = bias.to(torch.float32).contiguous() if bias is not None else wf
    af = acc if acc is not None else wf
    if inp.numel() == 0:
        return out
    bc, bh, bw = _blocks(inp)
    wrap_triton(_dwconv_kernel)[_grid(inp, bc, bh, bw)](
        inp, wf, bf, af, out, c, h, w, *inp.stride(), *out.stride(),
        KH=kh, KW=kw, HAS_BIAS=bias is not None, HAS_ACC=acc is not None,
        BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw,
    )
    return out


def dwconv_wgrad(g: torch.Tensor, inp: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """(C, 1, kh, kw) fp32 gradient of a depthwise "same" correlation's weight, given its output grad g."""
    b, c, h, w = g.shape
    if g.numel() == 0:
        return g.new_zeros((c, 1, kh, kw), dtype=torch.float32)
    bc, bh, bw = _blocks(g)
    n_tiles = triton.cdiv(h, bh) * triton.cdiv(w, bw)
    part = torch.empty((b, n_tiles, kh * kw, c), device=g.device, dtype=torch.float32)
    wrap_triton(_dwconv_wgrad_kernel)[_grid(g, bc, bh, bw)](
        g, inp, part, c, h, w, n_tiles, *g.stride(), *inp.stride(),
        KH=kh, KW=kw, BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw,
    )
    return part.sum(dim=(0, 1)).t().reshape(c, 1, kh, kw)


def strip_conv_forward(x, w0, b0, wh, bh, wv, bv, out: torch.Tensor) -> torch.Tensor:
    """s = a0 + Σ_i v_i(h_i(a0)) into ``out`` (any layout, any float dtype); 1 + 2·n launches."""
    bsz, c, h, w = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    if len(wh) == 0:
        return dwconv(x, w0, b0, out)
    a0 = dwconv(x, w0, b0, torch.empty((bsz, c, h, w), **f32))
    t = torch.empty_like(a0)
    running = a0
    for i in range(len(wh)):
        dwconv(a0, wh[i], bh[i], t)
        last = i == len(wh) - 1
        dest = out if last else (torch.empty_like(a0) if running is a0 else running)
        running = dwconv(t, wv[i], bv[i], dest, acc=running)
    return out


def strip_conv_backward(grad, x, w0, b0, wh, bh, wv, bv) -> list[torch.Tensor]:
    """[gx, gw0, gb0, *gwh, *gbh, *gwv, *gbv] of s = strip_conv(x, ...); recomputes a0 and each t_i.

    With g = ∂L/∂s:  gt_i = v_iᵀ(g), ∂wv_i = corr(g, t_i), ∂bv_i = Σg;  ga0 = g + Σ_i h_iᵀ(gt_i),
    ∂wh_i = corr(gt_i, a0), ∂bh_i = Σ gt_i;  gx = c0ᵀ(ga0), ∂w0 = corr(ga0, x), ∂b0 = Σ ga0.
    """
    bsz, c, h, w = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    a0 = dwconv(x, w0, b0, torch.empty((bsz, c, h, w), **f32))
    ga0 = grad.to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # fp32 accumulator, NCHW
    t = torch.empty_like(a0)
    gt = torch.empty_like(a0)
    gbv_all = ga0.sum(dim=(0, 2, 3))
    gwh, gbh, gwv, gbv = [], [], [], []
    for i in range(len(wh)):
        kh_v, k_h = wv[i].shape[-2], wh[i].shape[-1]
        dwconv(a0, wh[i], bh[i], t)
        gwv.append(dwconv_wgrad(grad, t, kh_v, 1).to(wv[i].dtype))
        gbv.append(gbv_all.to(bv[i].dtype, copy=True))
        dwconv(grad, wv[i], None, gt, flip=True)
        gwh.append(dwconv_wgrad(gt, a0, 1, k_h).to(wh[i].dtype))
        gbh.append(gt.sum(dim=(0, 2, 3)).to(bh[i].dtype))
        dwconv(gt, wh[i], None, ga0, acc=ga0, flip=True)
    gx = dwconv(ga0, w0, None, torch.empty_like(x), flip=True)
    gw0 = dwconv_wgrad(ga0, x, w0.shape[-2], w0.shape[-1]).to(w0.dtype)
    gb0 = ga0.sum(dim=(0, 2, 3)).to(b0.dtype)
    return [gx, gw0, gb0, *gwh, *gbh, *gwv, *gbv]
