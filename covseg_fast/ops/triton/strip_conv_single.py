"""Single-pass Triton forward of ``covseg::strip_conv``: x → s in one launch, intermediates on chip.

    a0 = b0 + dw_{k0×k0}(x);   s = a0 + Σ_i (bv_i + v_i(bh_i + h_i(a0)))      (≤ 3 strip branches)

Why: the three-launch schedule (``strip_conv_split.py``) writes a0 and every horizontal strip t_i to HBM
and reads them back (≈ 11 full-size accesses, 22E bytes in bf16). Here every intermediate lives in a
per-program scratch slot that stays in L1/L2, so HBM sees x (plus halo re-reads that mostly hit L2)
and s: ≈ 2E–3E bytes. The price is halo recomputation: for a TH×TW output tile and P = max k_i // 2,
a0 is computed on (TH+2P)×(TW+2P) pixels and the strips t_i on (TH+2P)×TW, ≈ 1.3× the direct MACs at
64×64 tiles (137 vs 103 per output for the SegNeXt sizes). KERNELS.md §2.2 predicts the fused
depthwise part to be FP32-compute-bound, so this trades ≈ 8 HBM passes for ≈ 30 % more FMAs.

Triton cannot shift a register tile, so each stage stores its result to the scratch slot and the next
stage reads it back at shifted offsets (``tl.debug_barrier`` = ``__syncthreads`` makes the CTA's
global writes visible to its own threads). The grid is persistent (a few programs per SM, each
looping over tiles) so the scratch footprint is bounded by the grid, not the image, and fits in L2.

Per tile (b, channel block, tile row, tile col), pixels flattened row-major and processed in chunks:
  1. a0 on the halo region (zero outside the image: it is the zero padding of the strips);
  2. t_i = bh_i + h_i(a0) for every branch at once on the halo rows (zero outside the image);
     each of the 2P+1 shifted a0 loads feeds every branch that has that tap;
  3. s = a0 + Σ_i (bv_i + v_i(t_i)), cast to the output dtype and stored in its layout.
Scratch is in x's dtype, rounding a0 and t_i where the reference (F.conv2d in that dtype) does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .device import gpu_tiles, needs_int64, sm_count


@triton.jit
def _tile_origin(tile, n_tw, n_th, n_cb, TH: tl.constexpr, TW: tl.constexpr, INT64: tl.constexpr):
    """Tile index → (batch, channel block, first row, first column); columns vary fastest, batch slowest.
    INT64: the channel block and the coordinates are int64, so every channel/row/column · stride product
    derived from them is (an image of C·H·W ≥ 2³¹ elements would wrap int32 products)."""
    tw_i = tile % n_tw
    rest = tile // n_tw
    th_i = rest % n_th
    rest = rest // n_th
    cb, h0, w0 = rest % n_cb, th_i * TH, tw_i * TW
    if INT64:
        cb, h0, w0 = tl.cast(cb, tl.int64), tl.cast(h0, tl.int64), tl.cast(w0, tl.int64)
    return (rest // n_cb).to(tl.int64), cb, h0, w0


@triton.jit
def _tile_chunk(start, lane, h0, w0, H, W, cmask, TW: tl.constexpr, NO: tl.constexpr):
    """Row/column in the tile, image row/column and masks (in the tile; and in the image) of the chunk of
    tile pixels starting at ``start``."""
    idx = start + lane
    rr = idx // TW
    cc = idx % TW
    gh = h0 + rr
    gw = w0 + cc
    lmask = (idx < NO) & cmask
    return rr, cc, gh, gw, lmask, lmask & (gh < H) & (gw < W)


@triton.jit
def _stage_a0(x_base, s_xh, s_xw, w0_ptr, b0_ptr, sa, ch, cmask, lane, h0, w0, H, W,
             K0: tl.constexpr, P: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
             BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """sa[c, r·RWA + q] = a0 at image pixel (h0 − P + r, w0 − P + q), RWA = TW + 2P, for the
    (TH+2P)×(TW+2P) halo region of the tile at (h0, w0); x read through x_base (per channel) and strides."""
    RWA: tl.constexpr = TW + 2 * P
    NA: tl.constexpr = (TH + 2 * P) * RWA
    b0 = tl.load(b0_ptr + ch, mask=cmask, other=0.0)
    for start in range(0, NA, CHUNK):
        idx = start + lane
        valid = idx < NA
        gh = h0 - P + idx // RWA
        gw = w0 - P + idx % RWA
        inside = valid & cmask & (gh >= 0) & (gh < H) & (gw >= 0) & (gw < W)
        acc = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
        for i in tl.static_range(K0):
            r = gh + (i - K0 // 2)
            rm = inside & (r >= 0) & (r < H)
            for j in tl.static_range(K0):
                q = gw + (j - K0 // 2)
                v = tl.load(x_base + r * s_xh + q * s_xw, mask=rm & (q >= 0) & (q < W), other=0.0)
                acc += v.to(tl.float32) * tl.load(w0_ptr + ch * (K0 * K0) + (i * K0 + j), mask=cmask, other=0.0)
        acc = tl.where(inside, acc + b0, 0.0)
        tl.store(sa + idx, acc.to(sa.dtype.element_ty), mask=valid & cmask)


@triton.jit
def _stage_strips_h(sa, st1, st2, st3, wh1_ptr, wh2_ptr, wh3_ptr, bh1_ptr, bh2_ptr, bh3_ptr,
                   ch, cmask, lane, h0, w0, H, W,
                   K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, P: tl.constexpr,
                   TH: tl.constexpr, TW: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """st_i[c, r·TW + q] = t_i at image pixel (h0 − P + r, w0 + q) on the TH+2P halo rows × the tile's
    TW columns, from the a0 region in sa (_stage_a0's layout)."""
    RWA: tl.constexpr = TW + 2 * P
    NT: tl.constexpr = (TH + 2 * P) * TW
    # (absent branches point at dummies: their biases are never read)
    bh1 = tl.load(bh1_ptr + ch, mask=cmask, other=0.0)
    bh2 = tl.load(bh2_ptr + ch, mask=cmask, other=0.0)
    bh3 = tl.load(bh3_ptr + ch, mask=cmask, other=0.0)
    for start in range(0, NT, CHUNK):
        idx = start + lane
        valid = idx < NT
        rr = idx // TW
        cc = idx % TW
        gh = h0 - P + rr
        gw = w0 + cc
        inside = valid & cmask & (gh >= 0) & (gh < H) & (gw < W)
        src = sa + rr * RWA + cc + P                       # a0 at the same pixel
        acc1 = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
        for d in tl.static_range(2 * P + 1):
            v = tl.load(src + (d - P), mask=valid & cmask, other=0.0).to(tl.float32)
            if K1 > 0:
                if d >= P - K1 // 2:
                    if d <= P + K1 // 2:
                        acc1 += v * tl.load(wh1_ptr + ch * K1 + (d - P + K1 // 2), mask=cmask, other=0.0)
            if K2 > 0:
                if d >= P - K2 // 2:
                    if d <= P + K2 // 2:
                        acc2 += v * tl.load(wh2_ptr + ch * K2 + (d - P + K2 // 2), mask=cmask, other=0.0)
            if K3 > 0:
                if d >= P - K3 // 2:
                    if d <= P + K3 // 2:
                        acc3 += v * tl.load(wh3_ptr + ch * K3 + (d - P + K3 // 2), mask=cmask, other=0.0)
        smask = valid & cmask
        if K1 > 0:
            tl.store(st1 + idx, tl.where(inside, acc1 + bh1, 0.0).to(st1.dtype.element_ty), mask=smask)
        if K2 > 0:
            tl.store(st2 + idx, tl.where(inside, acc2 + bh2, 0.0).to(st1.dtype.element_ty), mask=smask)
        if K3 > 0:
            tl.store(st3 + idx, tl.where(inside, acc3 + bh3, 0.0).to(st1.dtype.element_ty), mask=smask)


@triton.jit
def _strip_conv_single_kernel(
    x_ptr, w0_ptr, b0_ptr,
    wh1_ptr, wh2_ptr, wh3_ptr, bh1_ptr, bh2_ptr, bh3_ptr,
    wv1_ptr, wv2_ptr, wv3_ptr, bv1_ptr, bv2_ptr, bv3_ptr,
    out_ptr, scratch_ptr,
    C, H, W, n_tiles,
    s_xb, s_xc, s_xh, s_xw,
    s_ob, s_oc, s_oh, s_ow,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, P: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr, INT64: tl.constexpr,
):
    """Layout: x/out any strides (elements; INT64 when an offset passes 2³¹ − 1); w0 (C, K0*K0) fp32;
    wh_i/wv_i (C, K_i) fp32; biases (C,) fp32; K_i = 0 means "no branch i"; P = max K_i // 2 (≥ 0).
    scratch: (programs, slot) in x's dtype,
    slot = BLOCK_C·(NA + 3·NT) with NA = (TH+2P)(TW+2P), NT = (TH+2P)·TW.
    Grid: (programs,); program p handles tiles p, p + programs, ... < n_tiles, where a tile id is
    ((b · n_cb + cb) · n_th + th) · n_tw + tw (tile columns fastest, so concurrently running programs
    work on neighbouring tiles and share their halos in L2).
    """
    RWA: tl.constexpr = TW + 2 * P
    RHA: tl.constexpr = TH + 2 * P
    NA: tl.constexpr = RHA * RWA
    NT: tl.constexpr = RHA * TW
    NO: tl.constexpr = TH * TW
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    n_tw = tl.cdiv(W, TW)
    n_th = tl.cdiv(H, TH)
    n_cb = tl.cdiv(C, BLOCK_C)
    cl = tl.arange(0, BLOCK_C)[:, None]                      # channel within the block
    lane = tl.arange(0, CHUNK)[None, :]                       # pixel within the chunk
    slot = scratch_ptr + pid.to(tl.int64) * (BLOCK_C * (NA + 3 * NT))
    sa = slot + cl * NA                                       # a0 on the halo region
    st1 = slot + BLOCK_C * NA + cl * NT                       # t_i on the halo rows
    st2 = st1 + BLOCK_C * NT
    st3 = st2 + BLOCK_C * NT
    for tile in range(pid, n_tiles, n_prog):
        b, cb, h0, w0 = _tile_origin(tile, n_tw, n_th, n_cb, TH, TW, INT64)
        ch = cb * BLOCK_C + cl
        cmask = ch < C
        x_base = x_ptr + b * s_xb + ch * s_xc

        # 1. a0 = b0 + dw(x) on the (TH+2P)×(TW+2P) halo region, zero outside the image.
        _stage_a0(x_base, s_xh, s_xw, w0_ptr, b0_ptr, sa, ch, cmask, lane, h0, w0, H, W,
                 K0, P, TH, TW, BLOCK_C, CHUNK)
        tl.debug_barrier()

        # 2. t_i = bh_i + h_i(a0) on the halo rows × the tile's columns, zero outside the image.
        _stage_strips_h(sa, st1, st2, st3, wh1_ptr, wh2_ptr, wh3_ptr, bh1_ptr, bh2_ptr, bh3_ptr,
                       ch, cmask, lane, h0, w0, H, W, K1, K2, K3, P, TH, TW, BLOCK_C, CHUNK)
        tl.debug_barrier()

        # 3. s = a0 + Σ_i (bv_i + v_i(t_i)) on the tile, cast and stored in out's layout.
        bias = tl.zeros((BLOCK_C, 1), dtype=tl.float32)
        if K1 > 0:
            bias += tl.load(bv1_ptr + ch, mask=cmask, other=0.0)
        if K2 > 0:
            bias += tl.load(bv2_ptr + ch, mask=cmask, other=0.0)
        if K3 > 0:
            bias += tl.load(bv3_ptr + ch, mask=cmask, other=0.0)
        for start in range(0, NO, CHUNK):
            rr, cc, gh, gw, lmask, omask = _tile_chunk(start, lane, h0, w0, H, W, cmask, TW, NO)
            acc = tl.load(sa + (rr + P) * RWA + cc + P, mask=lmask, other=0.0).to(tl.float32) + bias
            if K1 > 0:
                for d in tl.static_range(K1):
                    v = tl.load(st1 + (rr + P + d - K1 // 2) * TW + cc, mask=lmask, other=0.0).to(tl.float32)
                    acc += v * tl.load(wv1_ptr + ch * K1 + d, mask=cmask, other=0.0)
            if K2 > 0:
                for d in tl.static_range(K2):
                    v = tl.load(st2 + (rr + P + d - K2 // 2) * TW + cc, mask=lmask, other=0.0).to(tl.float32)
                    acc += v * tl.load(wv2_ptr + ch * K2 + d, mask=cmask, other=0.0)
            if K3 > 0:
                for d in tl.static_range(K3):
                    v = tl.load(st3 + (rr + P + d - K3 // 2) * TW + cc, mask=lmask, other=0.0).to(tl.float32)
                    acc += v * tl.load(wv3_ptr + ch * K3 + d, mask=cmask, other=0.0)
            tl.store(out_ptr + b * s_ob + ch * s_oc + gh * s_oh + gw * s_ow,
                     acc.to(out_ptr.dtype.element_ty), mask=omask)
        tl.debug_barrier()  # the next tile overwrites this slot


def single_pass_config(x: torch.Tensor) -> dict:
    """Tile geometry and grid: BLOCK_C, TH×TW output tile, CHUNK, programs (or per SM), num_warps.

    NCHW: one channel per program, 64×64 output tiles (halo overhead 1.3× at P = 10).
    channels_last: 8 channels per program (a 16-byte bf16 vector per pixel), 32×32 tiles.
    GPU chunks are 512 elements at 4 warps: compiled for sm_90 (tests/triton_aot.py) that takes
    ≈ 168 registers and no stack; 1024 needed 255 registers and spilled (136 bytes of stack), so
    3 programs per SM are resident. Scratch: NCHW 46 KB × 3 × 132 SMs ≈ 18 MB, channels_last
    123 KB × 2 × 132 ≈ 32 MB, both inside the H100's 50 MB L2.
    Interpreter (CPU): 4 channels and 16×16 tiles per program, one chunk per stage (its cost is per
    op), 2 programs, so images over 16 pixels cover several tiles per program.
    Tiles never exceed the image (a smaller image gets a tile of its own size: less halo work).
    """
    cl = x.shape[1] > 1 and x.stride(1) == 1
    if not gpu_tiles(x.device):
        cfg = dict(BLOCK_C=4, TH=16, TW=16, CHUNK=512, per_sm=0, programs=2, num_warps=4)
    elif cl:
        cfg = dict(BLOCK_C=8, TH=32, TW=32, CHUNK=64, per_sm=2, programs=None, num_warps=4)
    else:
        cfg = dict(BLOCK_C=1, TH=64, TW=64, CHUNK=512, per_sm=3, programs=None, num_warps=4)
    cfg["TH"], cfg["TW"] = min(cfg["TH"], x.shape[2]), min(cfg["TW"], x.shape[3])
    return cfg


def strip_conv_single_pass(x, w0, b0, wf, bf, vf, vbf, ks, out: torch.Tensor) -> torch.Tensor:
    """s into ``out`` in one launch. wf/bf/vf/vbf: three (C, K) fp32 horizontal/vertical weights and
    (C,) biases each, padded with dummies where ks[i] == 0 (see ``strip_conv_split._pad3``)."""
    bsz, c, h, w = x.shape
    if x.numel() == 0:
        return out
    k0 = w0.shape[-1]
    p = max(ks) // 2
    cfg = single_pass_config(x)
    bc, th, tw = cfg["BLOCK_C"], cfg["TH"], cfg["TW"]
    n_tiles = bsz * triton.cdiv(c, bc) * triton.cdiv(h, th) * triton.cdiv(w, tw)
    programs = cfg["programs"] or cfg["per_sm"] * sm_count(x.device)
    programs = max(1, min(programs, n_tiles))
    slot = bc * ((th + 2 * p) * (tw + 2 * p) + 3 * (th + 2 * p) * tw)
    scratch = torch.empty((programs, slot), device=x.device, dtype=x.dtype)
    w0f = w0.reshape(c, k0 * k0).to(torch.float32).contiguous()
    b0f = b0.to(torch.float32).contiguous()
    wrap_triton(_strip_conv_single_kernel)[(programs,)](
        x, w0f, b0f, *wf, *bf, *vf, *vbf, out, scratch,
        c, h, w, n_tiles, *x.stride(), *out.stride(),
        K0=k0, K1=ks[0], K2=ks[1], K3=ks[2], P=p,
        TH=th, TW=tw, BLOCK_C=bc, CHUNK=cfg["CHUNK"], INT64=needs_int64(x, out), num_warps=cfg["num_warps"],
    )
    return out
