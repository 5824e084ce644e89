"""The split (three-launch) Triton schedule of ``covseg::strip_conv``: kernels, launchers, forward, backward.

Chosen by ``COVSEG_STRIP_CONV_SCHEDULE=split`` (``strip_conv.py`` dispatches between this schedule and
the single-pass one) and kept as the benchmark's comparison point.

Forward (``split_forward``), three launches through HBM:
  1. ``_strip_conv_dwconv_kernel``: a0 = b0 + dw_{k0×k0}(x), stored in x's dtype (fp32 accumulation).
  2. ``_strip_conv_spread_kernel``: all horizontal strips t_i = bh_i + h_i(a0) in one pass; each shifted
     a0 tile is loaded once and shared by every branch with that tap.
  3. ``_strip_conv_gather_kernel``: s = a0 + Σ_i (bv_i + v_i(t_i)), the biases, the 4-way sum and the cast
     to the output dtype/layout fused into one pass.
  HBM traffic in bf16 is 2E (x) + 2E (a0 out) + 2E+6E (spread) + 2E+6E+2E (gather) = 22E bytes
  versus ≈ 60E for the eager 13-kernel chain (KERNELS.md §2.2).

Backward (``split_backward``): recompute a0 and the t_i, then the transposed convs with the same kernels
and flipped weights (grad of an odd "same" correlation wrt its input is the correlation with the flipped
kernel): all gt_i = v_iᵀ(g) in one spread pass, ga0 = g + Σ h_iᵀ(gt_i) in one gather pass,
gx = c0ᵀ(ga0); weight grads by ``_strip_conv_dwconv_wgrad_kernel`` (per-tile partial sums reduced in fp32 by
torch), bias grads by torch sums: ≈ 50E bytes. Backward intermediates are fp32.

All kernels take arbitrary input/output strides, so NCHW and channels_last are read in place; the
intermediates are contiguous NCHW. ``dwconv`` (the whole forward when there is no strip branch) and
``_pad3`` (branch lists padded to 3) serve the single-pass schedule's dispatch too.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .device import gpu_tiles, needs_int64


@triton.jit
def _batch_and_tile(C, H, W, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """(batch (int64), tile within the image) of this program: both on grid axis 0, tiles fastest (axis 1
    stops at 65,535 images)."""
    per_image = tl.cdiv(C, BLOCK_C) * tl.cdiv(H, BLOCK_H) * tl.cdiv(W, BLOCK_W)
    pid = tl.program_id(0)
    return tl.cast(pid // per_image, tl.int64), pid % per_image


@triton.jit
def _tile_coords(pid_t, C, W, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                 INT64: tl.constexpr):
    # program tile t -> (channel-block, tile-row, tile-col); pixels flattened row-major in the tile.
    # INT64: channels, rows and columns are int64, so their products with the strides are too.
    n_tw = tl.cdiv(W, BLOCK_W)
    n_tc = tl.cdiv(C, BLOCK_C)
    tc = pid_t % n_tc
    rest = pid_t // n_tc
    th = rest // n_tw
    tw = rest % n_tw
    if INT64:
        tc, th, tw = tl.cast(tc, tl.int64), tl.cast(th, tl.int64), tl.cast(tw, tl.int64)
    ch = tc * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = tl.arange(0, BLOCK_H * BLOCK_W)[None, :]
    rows = th * BLOCK_H + p // BLOCK_W
    cols = tw * BLOCK_W + p % BLOCK_W
    return ch, rows, cols


@triton.jit
def _strip_conv_dwconv_kernel(
    inp_ptr, w_ptr, bias_ptr, out_ptr,
    C, H, W,
    s_ib, s_ic, s_ih, s_iw,
    s_ob, s_oc, s_oh, s_ow,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INT64: tl.constexpr,
):
    """out[b,c,h,w] = bias[c] + Σ_{i<KH, j<KW} w[c, i*KW+j] · inp[b,c,h+i-KH//2, w+j-KW//2].

    Layout: inp/out any strides (in elements, so NCHW and channels_last are read in place); w is
    (C, KH*KW) fp32 contiguous; bias (C,) fp32. Out-of-image taps read 0.
    Grid: (B · cdiv(C, BLOCK_C) · cdiv(H, BLOCK_H) · cdiv(W, BLOCK_W),), tiles of one image consecutive
    (``_batch_and_tile``); INT64 when an offset passes 2³¹ − 1. Program (b, t) computes a
    [BLOCK_C, BLOCK_H·BLOCK_W] tile (channels × flattened pixels) in fp32 registers, one pass over
    the KH·KW taps (each a masked shifted load + a per-channel weight vector), then one store.
    """
    b, pid_t = _batch_and_tile(C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    ch, rows, cols = _tile_coords(pid_t, C, W, BLOCK_C, BLOCK_H, BLOCK_W, INT64)
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
    tl.store(out_ptr + b * s_ob + ch * s_oc + rows * s_oh + cols * s_ow,
             acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _strip_conv_dwconv_wgrad_kernel(
    g_ptr, inp_ptr, part_ptr,
    C, H, W, n_tiles,
    s_gb, s_gc, s_gh, s_gw,
    s_ib, s_ic, s_ih, s_iw,
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INT64: tl.constexpr,
):
    """part[b, t, i*KW+j, c] = Σ_{(h,w) in tile t} g[b,c,h,w] · inp[b,c,h+i-KH//2, w+j-KW//2].

    Layout: g and inp any strides; part is fp32 contiguous (B, n_tiles, KH*KW, C) where n_tiles
    counts the spatial tiles (a program covers channels [tc·BLOCK_C, ...) of one spatial tile); the
    caller sums dims 0 and 1 to get the (KH*KW, C) weight gradient. Out-of-image inp taps read 0.
    Grid: as _strip_conv_dwconv_kernel; program (t, b) loads its g tile once and, per tap, reduces g · shifted
    inp over the pixel axis into a BLOCK_C vector (one vector store per tap).
    """
    b, pid_t = _batch_and_tile(C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    ch, rows, cols = _tile_coords(pid_t, C, W, BLOCK_C, BLOCK_H, BLOCK_W, INT64)
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


@triton.jit
def _strip_conv_spread_kernel(
    inp_ptr, w1_ptr, w2_ptr, w3_ptr, b1_ptr, b2_ptr, b3_ptr, o1_ptr, o2_ptr, o3_ptr,
    C, H, W,
    s_ib, s_ic, s_ih, s_iw,
    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, P: tl.constexpr,
    VERTICAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INT64: tl.constexpr,
):
    """One input, up to three 1-D strips: o_i = b_i + Σ_{|d| ≤ K_i//2} w_i[c, d + K_i//2] · inp(shifted by d).

    The shift is along W (1×K strips) or along H when VERTICAL (K×1 strips); K_i = 0 means "no
    branch i"; P = max K_i // 2. Each of the 2P+1 shifted tiles of inp is loaded once and used by
    every branch that has that tap (the 7- and 11-strips reuse the 21-strip's loads).
    Layout: inp any strides; w_i (C, K_i) fp32; b_i (C,) fp32; o_i contiguous NCHW in any dtype.
    Grid/tile: as _strip_conv_dwconv_kernel.
    """
    b, pid_t = _batch_and_tile(C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    ch, rows, cols = _tile_coords(pid_t, C, W, BLOCK_C, BLOCK_H, BLOCK_W, INT64)
    cmask = ch < C
    omask = cmask & (rows < H) & (cols < W)
    in_base = inp_ptr + b * s_ib + ch * s_ic
    acc1 = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    for j in tl.static_range(2 * P + 1):
        if VERTICAL:
            r = rows + (j - P)
            m = omask & (r >= 0) & (r < H)
            v = tl.load(in_base + r * s_ih + cols * s_iw, mask=m, other=0.0).to(tl.float32)
        else:
            q = cols + (j - P)
            m = omask & (q >= 0) & (q < W)
            v = tl.load(in_base + rows * s_ih + q * s_iw, mask=m, other=0.0).to(tl.float32)
        if K1 > 0:
            if j >= P - K1 // 2:
                if j <= P + K1 // 2:
                    acc1 += v * tl.load(w1_ptr + ch * K1 + (j - P + K1 // 2), mask=cmask, other=0.0)
        if K2 > 0:
            if j >= P - K2 // 2:
                if j <= P + K2 // 2:
                    acc2 += v * tl.load(w2_ptr + ch * K2 + (j - P + K2 // 2), mask=cmask, other=0.0)
        if K3 > 0:
            if j >= P - K3 // 2:
                if j <= P + K3 // 2:
                    acc3 += v * tl.load(w3_ptr + ch * K3 + (j - P + K3 // 2), mask=cmask, other=0.0)
    off = ((b * C + ch) * H + rows) * W + cols
    if K1 > 0:
        if HAS_BIAS:
            acc1 += tl.load(b1_ptr + ch, mask=cmask, other=0.0)
        tl.store(o1_ptr + off, acc1.to(o1_ptr.dtype.element_ty), mask=omask)
    if K2 > 0:
        if HAS_BIAS:
            acc2 += tl.load(b2_ptr + ch, mask=cmask, other=0.0)
        tl.store(o2_ptr + off, acc2.to(o2_ptr.dtype.element_ty), mask=omask)
    if K3 > 0:
        if HAS_BIAS:
            acc3 += tl.load(b3_ptr + ch, mask=cmask, other=0.0)
        tl.store(o3_ptr + off, acc3.to(o3_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _strip_taps(acc, in_ptr, w_ptr, b_ptr, ch, rows, cols, cmask, omask, b, C, H, W,
                K: tl.constexpr, VERTICAL: tl.constexpr, HAS_BIAS: tl.constexpr):
    # acc + b[c] + Σ_j w[c, j] · in(shifted by j - K//2); in is contiguous NCHW.
    base = in_ptr + (b * C + ch) * H * W
    for j in tl.static_range(K):
        if VERTICAL:
            r = rows + (j - K // 2)
            m = omask & (r >= 0) & (r < H)
            v = tl.load(base + r * W + cols, mask=m, other=0.0).to(tl.float32)
        else:
            q = cols + (j - K // 2)
            m = omask & (q >= 0) & (q < W)
            v = tl.load(base + rows * W + q, mask=m, other=0.0).to(tl.float32)
        acc += v * tl.load(w_ptr + ch * K + j, mask=cmask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + ch, mask=cmask, other=0.0)
    return acc


@triton.jit
def _strip_conv_gather_kernel(
    base_ptr, i1_ptr, i2_ptr, i3_ptr, w1_ptr, w2_ptr, w3_ptr, b1_ptr, b2_ptr, b3_ptr, out_ptr,
    C, H, W,
    s_bb, s_bc, s_bh, s_bw,
    s_ob, s_oc, s_oh, s_ow,
    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
    VERTICAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INT64: tl.constexpr,
):
    """Up to three inputs, one output: out = base + Σ_i (b_i + strip_i(in_i)), the 4-way MSCA sum.

    strip_i is a 1-D correlation of length K_i along H (VERTICAL) or W; K_i = 0 means "no branch i".
    Layout: base and out any strides (out in any dtype, the cast is the epilogue); in_i contiguous
    NCHW; w_i (C, K_i) fp32; b_i (C,) fp32. Grid/tile: as _strip_conv_dwconv_kernel.
    """
    b, pid_t = _batch_and_tile(C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    ch, rows, cols = _tile_coords(pid_t, C, W, BLOCK_C, BLOCK_H, BLOCK_W, INT64)
    cmask = ch < C
    omask = cmask & (rows < H) & (cols < W)
    acc = tl.load(base_ptr + b * s_bb + ch * s_bc + rows * s_bh + cols * s_bw, mask=omask, other=0.0).to(tl.float32)
    if K1 > 0:
        acc = _strip_taps(acc, i1_ptr, w1_ptr, b1_ptr, ch, rows, cols, cmask, omask, b, C, H, W, K1, VERTICAL, HAS_BIAS)
    if K2 > 0:
        acc = _strip_taps(acc, i2_ptr, w2_ptr, b2_ptr, ch, rows, cols, cmask, omask, b, C, H, W, K2, VERTICAL, HAS_BIAS)
    if K3 > 0:
        acc = _strip_taps(acc, i3_ptr, w3_ptr, b3_ptr, ch, rows, cols, cmask, omask, b, C, H, W, K3, VERTICAL, HAS_BIAS)
    tl.store(out_ptr + b * s_ob + ch * s_oc + rows * s_oh + cols * s_ow, acc.to(out_ptr.dtype.element_ty), mask=omask)


def _blocks(x: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_H, BLOCK_W): channels-heavy tiles for channels_last, row-heavy for NCHW."""
    c = x.shape[1]
    if not gpu_tiles(x.device):  # interpreter: few large programs (its cost is per program and per op)
        return min(16, triton.next_power_of_2(c)), 16, 32
    # GPU: 256-element tiles (2 per thread at 4 warps). Larger ones spill: compiled for sm_90
    # (tests/triton_aot.py) the gather kernel needed 255 registers + 450–700 bytes of stack at 1024.
    if x.stride(1) == 1 and c > 1:  # channels_last: vectorise along C (32 bytes per pixel in bf16)
        return min(16, triton.next_power_of_2(c)), 2, 8
    return 1, 8, 32


def _grid(x: torch.Tensor, bc: int, bh: int, bw: int) -> tuple[int]:
    b, c, h, w = x.shape
    # batch and tiles on grid axis 0 (up to 2³¹−1 programs; axis 1 would stop at 65,535 images)
    return (b * triton.cdiv(c, bc) * triton.cdiv(h, bh) * triton.cdiv(w, bw),)


def dwconv(inp: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
           flip: bool = False) -> torch.Tensor:
    """``out = bias + depthwise_correlation(inp, weight)`` with "same" zero padding, cast to out.dtype.

    inp, out: (B, C, H, W) any strides; weight (C, 1, KH, KW) odd sizes (flipped in both axes when
    ``flip``, giving the transposed conv); bias (C,) or None.
    """
    b, c, h, w = inp.shape
    kh, kw = weight.shape[-2:]
    if flip:
        weight = weight.flip(-1, -2)
    wf = weight.reshape(c, kh * kw).to(torch.float32).contiguous()
    bf = bias.to(torch.float32).contiguous() if bias is not None else wf
    if inp.numel() == 0:
        return out
    bc, bh, bw = _blocks(inp)
    wrap_triton(_strip_conv_dwconv_kernel)[_grid(inp, bc, bh, bw)](
        inp, wf, bf, out, c, h, w, *inp.stride(), *out.stride(),
        KH=kh, KW=kw, HAS_BIAS=bias is not None,
        BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw, INT64=needs_int64(inp, out),
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
    wrap_triton(_strip_conv_dwconv_wgrad_kernel)[_grid(g, bc, bh, bw)](
        g, inp, part, c, h, w, n_tiles, *g.stride(), *inp.stride(),
        KH=kh, KW=kw, BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw, INT64=needs_int64(g, inp, part),
    )
    return part.sum(dim=(0, 1)).t().reshape(c, 1, kh, kw)


MAX_BRANCHES = 3


def _pad3(ws, bs, flip):
    """(weights (C, K) fp32 ×3, biases ×3, sizes ×3) with K = 0 / dummies for absent branches."""
    c = ws[0].shape[0]
    wf = [(w.flip(-1, -2) if flip else w).reshape(c, -1).to(torch.float32).contiguous() for w in ws]
    bf = [bb.to(torch.float32).contiguous() for bb in bs] if bs is not None else list(wf)
    ks = [w.shape[1] for w in wf]
    while len(wf) < MAX_BRANCHES:
        wf.append(wf[0]), bf.append(bf[0]), ks.append(0)
    return wf, bf, ks


def strips_spread(inp, ws, bs, outs, vertical: bool, flip: bool = False):
    """outs[i] = b_i + strip_i(inp) for ≤ 3 strips in one pass (outs contiguous NCHW)."""
    if inp.numel() == 0:
        return outs
    wf, bf, ks = _pad3(ws, bs, flip)
    o = list(outs) + [outs[0]] * (MAX_BRANCHES - len(outs))
    bc, bh, bw = _blocks(inp)
    wrap_triton(_strip_conv_spread_kernel)[_grid(inp, bc, bh, bw)](
        inp, *wf, *bf, *o, inp.shape[1], inp.shape[2], inp.shape[3], *inp.stride(),
        K1=ks[0], K2=ks[1], K3=ks[2], P=max(ks) // 2, VERTICAL=vertical, HAS_BIAS=bs is not None,
        BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw, INT64=needs_int64(inp, *o),
    )
    return outs


def strips_gather(base, ins, ws, bs, out, vertical: bool, flip: bool = False):
    """out = base + Σ_i (b_i + strip_i(ins[i])) for ≤ 3 strips in one pass (ins contiguous NCHW)."""
    if base.numel() == 0:
        return out
    wf, bf, ks = _pad3(ws, bs, flip)
    i3 = list(ins) + [ins[0]] * (MAX_BRANCHES - len(ins))
    bc, bh, bw = _blocks(out)
    wrap_triton(_strip_conv_gather_kernel)[_grid(out, bc, bh, bw)](
        base, *i3, *wf, *bf, out, out.shape[1], out.shape[2], out.shape[3], *base.stride(), *out.stride(),
        K1=ks[0], K2=ks[1], K3=ks[2], VERTICAL=vertical, HAS_BIAS=bs is not None,
        BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw, INT64=needs_int64(base, out, *i3),
    )
    return out


def _intermediate_dtype(x: torch.Tensor) -> torch.dtype:
    # a0 and the horizontal strips are stored in x's dtype (as the reference rounds them), halving
    # their traffic in bf16/fp16; every sum is accumulated in fp32 registers.
    return x.dtype


def split_forward(x, w0, b0, wh, bh, wv, bv, out: torch.Tensor) -> torch.Tensor:
    """s = a0 + Σ_i v_i(h_i(a0)) into ``out`` in 3 launches, 1 ≤ len(wh) ≤ 3:
    a0 = dw(x) → {t_i = h_i(a0)} in one pass → s = a0 + Σ v_i(t_i) in one pass."""
    bsz, c, h, w = x.shape
    a0 = dwconv(x, w0, b0, torch.empty((bsz, c, h, w), device=x.device, dtype=_intermediate_dtype(x)))
    ts = strips_spread(a0, wh, bh, [torch.empty_like(a0) for _ in wh], vertical=False)
    return strips_gather(a0, ts, wv, bv, out, vertical=True)


def split_backward(grad, x, w0, b0, wh, bh, wv, bv) -> list[torch.Tensor]:
    """[gx, gw0, gb0, *gwh, *gbh, *gwv, *gbv] of s = strip_conv(x, ...) (any number of branches ≤ 3, 0 too).

    Launches: a0, all t_i, all gt_i (one pass over g), ga0 (one pass), gx, and one wgrad per weight.
    """
    bsz, c, h, w = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    a0 = dwconv(x, w0, b0, torch.empty((bsz, c, h, w), device=x.device, dtype=_intermediate_dtype(x)))
    gwh, gbh, gwv, gbv = [], [], [], []
    ga0 = grad
    if len(wh):
        ts = strips_spread(a0, wh, bh, [torch.empty_like(a0) for _ in wh], vertical=False)
        gts = strips_spread(grad, wv, None, [torch.empty((bsz, c, h, w), **f32) for _ in wh], vertical=True, flip=True)
        ga0 = strips_gather(grad, gts, wh, None, torch.empty((bsz, c, h, w), **f32), vertical=False, flip=True)
        gb_v = grad.to(torch.float32).sum(dim=(0, 2, 3))
        for i in range(len(wh)):
            gwv.append(dwconv_wgrad(grad, ts[i], wv[i].shape[-2], 1).to(wv[i].dtype))
            gbv.append(gb_v.to(bv[i].dtype, copy=True))
            gwh.append(dwconv_wgrad(gts[i], a0, 1, wh[i].shape[-1]).to(wh[i].dtype))
            gbh.append(gts[i].sum(dim=(0, 2, 3)).to(bh[i].dtype))
    gx = dwconv(ga0, w0, None, torch.empty_like(x), flip=True)
    gw0 = dwconv_wgrad(ga0, x, w0.shape[-2], w0.shape[-1]).to(w0.dtype)
    gb0 = ga0.to(torch.float32).sum(dim=(0, 2, 3)).to(b0.dtype)
    return [gx, gw0, gb0, *gwh, *gbh, *gwv, *gbv]
