"""Single-pass Triton backward of ``covseg::strip_conv``: (g, x) → gx and every weight/bias gradient.

Why: the split backward (``strip_conv_split.py``) writes a0, the three t_i, the three gt_i and ga0 to HBM
(fp32 for the gradients) and runs a separate weight-gradient pass per weight: ≈ 50 full-size
accesses in bf16 units, more than eager autograd's ≈ 38. Here each tile recomputes what it needs in
a per-program scratch (as the single-pass forward does) and HBM sees x and g (halo re-reads mostly
hit L2), gx, and per-tile weight-gradient partials (B·tiles·C·≤128 fp32, small).

With P = max k_i // 2, Q = k0 // 2 and g = ∂L/∂s, per TH×TW tile at (h0, w0) (all sums over the tile
only, so every output pixel counts once over the grid):
  1. a0 on rows/cols ±P (as the forward)                       → scratch
  2. t_i = bh_i + h_i(a0) on rows ±P × the tile's columns        → scratch
  3. gt_i = v_iᵀ(g) on rows ±Q × cols ±(Q+P) (zero outside)       → scratch
  4. ga0 = g + Σ_i h_iᵀ(gt_i) on rows/cols ±Q (zero outside)      → scratch
  5. gx = c0ᵀ(ga0) on the tile → HBM;  ∂w0[i,j] = Σ ga0·x(shifted), ∂b0 = Σ ga0
  6. ∂wv_i[d] = Σ g·t_i(row-shifted), ∂bv_i = Σ g;  ∂wh_i[d] = Σ gt_i·a0(col-shifted), ∂bh_i = Σ gt_i
The weight-gradient sums of a tile accumulate in one (BLOCK_C, NTAP) fp32 register block (column =
tap; layout in :func:`tap_layout`) stored once per tile; torch sums the partials. The scratch is fp32
(the split backward also keeps gradient intermediates in fp32); a0 and t_i are therefore not rounded
to x's dtype as in the forward, a difference below the low-precision test bounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .device import gpu_tiles, needs_int64, sm_count
from .strip_conv_single import _stage_a0, _stage_strips_h, _tile_chunk, _tile_origin


def tap_layout(k0: int, ks: list[int]) -> dict:
    """Columns of the weight-gradient block: w0 taps, wh_i taps, wv_i taps, b0, bh_i, bv (shared)."""
    off, cols = 0, {}
    cols["w0"] = off
    off += k0 * k0
    for name in ("wh", "wv"):
        for i, k in enumerate(ks):
            cols[f"{name}{i}"] = off
            off += k
    cols["b0"] = off
    cols.update({f"bh{i}": off + 1 + i for i in range(3)})
    cols["bv"] = off + 4
    cols["n"] = off + 5
    return cols


@triton.jit
def _acc_tap(wacc, taps, col, prod):
    # add Σ over the chunk's pixels of prod (BLOCK_C, CHUNK) into column col of wacc (BLOCK_C, NTAP_P2)
    return wacc + tl.where(taps == col, tl.sum(prod, axis=1)[:, None], 0.0)


@triton.jit
def _gt_stage(g_base, s_gh, s_gw, sg1, sg2, sg3, wv1_ptr, wv2_ptr, wv3_ptr, ch, cmask, lane, h0, w0, H, W,
              K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, P: tl.constexpr, Q: tl.constexpr,
              TH: tl.constexpr, TW: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """sg_i[c, r·RWG + q] = gt_i at (h0 − Q + r, w0 − Q − P + q), RWG = TW + 2Q + 2P, zero outside the image.
    gt_i[p] = Σ_d wv_i[d] · g[p + (K_i//2 − d, 0)] (the vertical strip transposed: flipped taps)."""
    RWG: tl.constexpr = TW + 2 * Q + 2 * P
    NG: tl.constexpr = (TH + 2 * Q) * RWG
    for start in tl.range(0, NG, CHUNK, disable_licm=True):
        idx = start + lane
        valid = idx < NG
        gh = h0 - Q + idx // RWG
        gw = w0 - Q - P + idx % RWG
        inside = valid & cmask & (gh >= 0) & (gh < H) & (gw >= 0) & (gw < W)
        acc1 = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
        for e in tl.static_range(2 * P + 1):
            r = gh + (e - P)
            v = tl.load(g_base + r * s_gh + gw * s_gw, mask=inside & (r >= 0) & (r < H), other=0.0).to(tl.float32)
            if K1 > 0:
                if e >= P - K1 // 2:
                    if e <= P + K1 // 2:
                        acc1 += v * tl.load(wv1_ptr + ch * K1 + (K1 // 2 + P - e), mask=cmask, other=0.0)
            if K2 > 0:
                if e >= P - K2 // 2:
                    if e <= P + K2 // 2:
                        acc2 += v * tl.load(wv2_ptr + ch * K2 + (K2 // 2 + P - e), mask=cmask, other=0.0)
            if K3 > 0:
                if e >= P - K3 // 2:
                    if e <= P + K3 // 2:
                        acc3 += v * tl.load(wv3_ptr + ch * K3 + (K3 // 2 + P - e), mask=cmask, other=0.0)
        smask = valid & cmask
        if K1 > 0:
            tl.store(sg1 + idx, acc1, mask=smask)
        if K2 > 0:
            tl.store(sg2 + idx, acc2, mask=smask)
        if K3 > 0:
            tl.store(sg3 + idx, acc3, mask=smask)


@triton.jit
def _ga0_stage(g_base, s_gh, s_gw, sg1, sg2, sg3, sga, wh1_ptr, wh2_ptr, wh3_ptr, ch, cmask, lane, h0, w0, H, W,
               K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, P: tl.constexpr, Q: tl.constexpr,
               TH: tl.constexpr, TW: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """sga[c, r·RWD + q] = ga0 at (h0 − Q + r, w0 − Q + q), RWD = TW + 2Q, zero outside the image:
    ga0 = g + Σ_i Σ_d wh_i[d] · gt_i[p + (0, K_i//2 − d)]."""
    RWG: tl.constexpr = TW + 2 * Q + 2 * P
    RWD: tl.constexpr = TW + 2 * Q
    ND: tl.constexpr = (TH + 2 * Q) * RWD
    for start in tl.range(0, ND, CHUNK, disable_licm=True):
        idx = start + lane
        valid = idx < ND
        rr = idx // RWD
        cc = idx % RWD
        gh = h0 - Q + rr
        gw = w0 - Q + cc
        inside = valid & cmask & (gh >= 0) & (gh < H) & (gw >= 0) & (gw < W)
        acc = tl.load(g_base + gh * s_gh + gw * s_gw, mask=inside, other=0.0).to(tl.float32)
        src = rr * RWG + cc + P  # this pixel in the gt region
        lmask = valid & cmask
        for e in tl.static_range(2 * P + 1):
            if K1 > 0:
                if e >= P - K1 // 2:
                    if e <= P + K1 // 2:
                        v = tl.load(sg1 + src + (e - P), mask=lmask, other=0.0)
                        acc += v * tl.load(wh1_ptr + ch * K1 + (K1 // 2 + P - e), mask=cmask, other=0.0)
            if K2 > 0:
                if e >= P - K2 // 2:
                    if e <= P + K2 // 2:
                        v = tl.load(sg2 + src + (e - P), mask=lmask, other=0.0)
                        acc += v * tl.load(wh2_ptr + ch * K2 + (K2 // 2 + P - e), mask=cmask, other=0.0)
            if K3 > 0:
                if e >= P - K3 // 2:
                    if e <= P + K3 // 2:
                        v = tl.load(sg3 + src + (e - P), mask=lmask, other=0.0)
                        acc += v * tl.load(wh3_ptr + ch * K3 + (K3 // 2 + P - e), mask=cmask, other=0.0)
        tl.store(sga + idx, tl.where(inside, acc, 0.0), mask=lmask)


@triton.jit
def _branch_wgrads(wacc, taps, gv, st, sg, sa, ptile, lmask, rr, cc,
                   K: tl.constexpr, OFF_WH: tl.constexpr, OFF_WV: tl.constexpr, OFF_BH: tl.constexpr,
                   P: tl.constexpr, Q: tl.constexpr, TW: tl.constexpr):
    # ∂wv[d] = Σ g·t(row + d − K//2); ∂wh[d] = Σ gt·a0(col + d − K//2); ∂bh = Σ gt  (tile pixels only)
    RWA: tl.constexpr = TW + 2 * P
    RWG: tl.constexpr = TW + 2 * Q + 2 * P
    for d in tl.static_range(K):
        tv = tl.load(st + (rr + P + d - K // 2) * TW + cc, mask=lmask, other=0.0)
        wacc = _acc_tap(wacc, taps, OFF_WV + d, gv * tv)
    gtv = tl.load(sg + (rr + Q) * RWG + cc + Q + P, mask=ptile, other=0.0)
    wacc = _acc_tap(wacc, taps, OFF_BH, gtv)
    for d in tl.static_range(K):
        av = tl.load(sa + (rr + P) * RWA + cc + P + d - K // 2, mask=lmask, other=0.0)
        wacc = _acc_tap(wacc, taps, OFF_WH + d, gtv * av)
    return wacc


@triton.jit
def _strip_wgrads(wacc, taps, g_base, s_gh, s_gw, st1, st2, st3, sg1, sg2, sg3, sa, gh, gw, ptile, lmask, rr, cc,
                  K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
                  OFF_WH1: tl.constexpr, OFF_WH2: tl.constexpr, OFF_WH3: tl.constexpr,
                  OFF_WV1: tl.constexpr, OFF_WV2: tl.constexpr, OFF_WV3: tl.constexpr,
                  OFF_BH1: tl.constexpr, OFF_BH2: tl.constexpr, OFF_BH3: tl.constexpr, OFF_BV: tl.constexpr,
                  P: tl.constexpr, Q: tl.constexpr, TW: tl.constexpr):
    # ∂bv (shared by the branches) and every branch's ∂wv, ∂wh, ∂bh over one chunk of tile pixels
    gv = tl.load(g_base + gh * s_gh + gw * s_gw, mask=ptile, other=0.0).to(tl.float32)
    wacc = _acc_tap(wacc, taps, OFF_BV, gv)
    if K1 > 0:
        wacc = _branch_wgrads(wacc, taps, gv, st1, sg1, sa, ptile, lmask, rr, cc, K1, OFF_WH1, OFF_WV1, OFF_BH1, P, Q, TW)
    if K2 > 0:
        wacc = _branch_wgrads(wacc, taps, gv, st2, sg2, sa, ptile, lmask, rr, cc, K2, OFF_WH2, OFF_WV2, OFF_BH2, P, Q, TW)
    if K3 > 0:
        wacc = _branch_wgrads(wacc, taps, gv, st3, sg3, sa, ptile, lmask, rr, cc, K3, OFF_WH3, OFF_WV3, OFF_BH3, P, Q, TW)
    return wacc


@triton.jit
def _strip_conv_single_backward_kernel(
    g_ptr, x_ptr, w0_ptr, b0_ptr,
    wh1_ptr, wh2_ptr, wh3_ptr, bh1_ptr, bh2_ptr, bh3_ptr, wv1_ptr, wv2_ptr, wv3_ptr,
    gx_ptr, part_ptr, scratch_ptr,
    C, H, W, n_tiles,
    s_gb, s_gc, s_gh, s_gw,
    s_xb, s_xc, s_xh, s_xw,
    s_ob, s_oc, s_oh, s_ow,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, P: tl.constexpr,
    OFF_WH1: tl.constexpr, OFF_WH2: tl.constexpr, OFF_WH3: tl.constexpr,
    OFF_WV1: tl.constexpr, OFF_WV2: tl.constexpr, OFF_WV3: tl.constexpr,
    OFF_B0: tl.constexpr, OFF_BH1: tl.constexpr, OFF_BH2: tl.constexpr, OFF_BH3: tl.constexpr,
    OFF_BV: tl.constexpr, NTAP_P2: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr, INT64: tl.constexpr,
    TWO_SWEEPS: tl.constexpr,
):
    """Layout: g, x, gx any strides (INT64 when an offset, or the partials' size, passes 2³¹ − 1); weights (C, K) fp32, biases (C,) fp32 (only bh is read); K_i = 0:
    no branch i. part: (n_tiles, BLOCK_C, NTAP_P2) fp32, one row of tap sums per tile and channel.
    scratch: (programs, slot) fp32, slot = BLOCK_C·(NA + 3·NT + 3·NG + ND) (see the stages).
    TWO_SWEEPS: steps 5–6 sweep the tile twice (gx, ∂w0, ∂b0; then the strip branches' sums), so fewer
    values are live at once (see single_pass_backward_config).
    Grid: (programs,), persistent over tiles numbered as in the forward kernel.
    """
    Q: tl.constexpr = K0 // 2
    NA: tl.constexpr = (TH + 2 * P) * (TW + 2 * P)
    NT: tl.constexpr = (TH + 2 * P) * TW
    NG: tl.constexpr = (TH + 2 * Q) * (TW + 2 * Q + 2 * P)
    RWD: tl.constexpr = TW + 2 * Q
    ND: tl.constexpr = (TH + 2 * Q) * RWD
    NO: tl.constexpr = TH * TW
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    n_tw = tl.cdiv(W, TW)
    n_th = tl.cdiv(H, TH)
    n_cb = tl.cdiv(C, BLOCK_C)
    cl = tl.arange(0, BLOCK_C)[:, None]
    lane = tl.arange(0, CHUNK)[None, :]
    taps = tl.arange(0, NTAP_P2)[None, :]
    slot = scratch_ptr + pid.to(tl.int64) * (BLOCK_C * (NA + 3 * NT + 3 * NG + ND))
    sa = slot + cl * NA
    st1 = slot + BLOCK_C * NA + cl * NT
    st2 = st1 + BLOCK_C * NT
    st3 = st2 + BLOCK_C * NT
    sg1 = slot + BLOCK_C * (NA + 3 * NT) + cl * NG
    sg2 = sg1 + BLOCK_C * NG
    sg3 = sg2 + BLOCK_C * NG
    sga = slot + BLOCK_C * (NA + 3 * NT + 3 * NG) + cl * ND
    for tile in range(pid, n_tiles, n_prog):
        b, cb, h0, w0 = _tile_origin(tile, n_tw, n_th, n_cb, TH, TW, INT64)
        ch = cb * BLOCK_C + cl
        cmask = ch < C
        x_base = x_ptr + b * s_xb + ch * s_xc
        g_base = g_ptr + b * s_gb + ch * s_gc

        _stage_a0(x_base, s_xh, s_xw, w0_ptr, b0_ptr, sa, ch, cmask, lane, h0, w0, H, W,
                 K0, P, TH, TW, BLOCK_C, CHUNK)
        tl.debug_barrier()
        _stage_strips_h(sa, st1, st2, st3, wh1_ptr, wh2_ptr, wh3_ptr, bh1_ptr, bh2_ptr, bh3_ptr,
                       ch, cmask, lane, h0, w0, H, W, K1, K2, K3, P, TH, TW, BLOCK_C, CHUNK)
        _gt_stage(g_base, s_gh, s_gw, sg1, sg2, sg3, wv1_ptr, wv2_ptr, wv3_ptr, ch, cmask, lane, h0, w0, H, W,
                  K1, K2, K3, P, Q, TH, TW, BLOCK_C, CHUNK)
        tl.debug_barrier()
        _ga0_stage(g_base, s_gh, s_gw, sg1, sg2, sg3, sga, wh1_ptr, wh2_ptr, wh3_ptr, ch, cmask, lane,
                   h0, w0, H, W, K1, K2, K3, P, Q, TH, TW, BLOCK_C, CHUNK)
        tl.debug_barrier()

        # 5–6. gx and the weight-gradient sums over the tile's pixels (one sweep, or two with TWO_SWEEPS)
        wacc = tl.zeros((BLOCK_C, NTAP_P2), dtype=tl.float32)
        for start in tl.range(0, NO, CHUNK, disable_licm=True):
            rr, cc, gh, gw, lmask, ptile = _tile_chunk(start, lane, h0, w0, H, W, cmask, TW, NO)
            ga = tl.load(sga + (rr + Q) * RWD + cc + Q, mask=ptile, other=0.0)
            gx = tl.zeros((BLOCK_C, CHUNK), dtype=tl.float32)
            for i in tl.static_range(K0):
                r = gh + (i - Q)
                rm = ptile & (r >= 0) & (r < H)
                for j in tl.static_range(K0):
                    wt = tl.load(w0_ptr + ch * (K0 * K0) + (i * K0 + j), mask=cmask, other=0.0)
                    # gx[p] = Σ w0[i, j] · ga0[p + (Q − i, Q − j)]
                    gx += wt * tl.load(sga + (rr + 2 * Q - i) * RWD + cc + 2 * Q - j, mask=lmask, other=0.0)
                    q = gw + (j - Q)
                    xv = tl.load(x_base + r * s_xh + q * s_xw, mask=rm & (q >= 0) & (q < W), other=0.0)
                    wacc = _acc_tap(wacc, taps, i * K0 + j, ga * xv.to(tl.float32))
            tl.store(gx_ptr + b * s_ob + ch * s_oc + gh * s_oh + gw * s_ow, gx.to(gx_ptr.dtype.element_ty),
                     mask=ptile)
            wacc = _acc_tap(wacc, taps, OFF_B0, ga)
            if not TWO_SWEEPS:
                wacc = _strip_wgrads(wacc, taps, g_base, s_gh, s_gw, st1, st2, st3, sg1, sg2, sg3, sa,
                                     gh, gw, ptile, lmask, rr, cc, K1, K2, K3, OFF_WH1, OFF_WH2, OFF_WH3,
                                     OFF_WV1, OFF_WV2, OFF_WV3, OFF_BH1, OFF_BH2, OFF_BH3, OFF_BV, P, Q, TW)
        if TWO_SWEEPS:
            for start in tl.range(0, NO, CHUNK, disable_licm=True):
                rr, cc, gh, gw, lmask, ptile = _tile_chunk(start, lane, h0, w0, H, W, cmask, TW, NO)
                wacc = _strip_wgrads(wacc, taps, g_base, s_gh, s_gw, st1, st2, st3, sg1, sg2, sg3, sa,
                                     gh, gw, ptile, lmask, rr, cc, K1, K2, K3, OFF_WH1, OFF_WH2, OFF_WH3,
                                     OFF_WV1, OFF_WV2, OFF_WV3, OFF_BH1, OFF_BH2, OFF_BH3, OFF_BV, P, Q, TW)
        if INT64:
            part_tile = part_ptr + tl.cast(tile, tl.int64) * (BLOCK_C * NTAP_P2)
        else:
            part_tile = part_ptr + tile * (BLOCK_C * NTAP_P2)
        tl.store(part_tile + cl * NTAP_P2 + taps, wacc, mask=cmask)
        tl.debug_barrier()  # the next tile overwrites this slot


def single_pass_backward_config(x: torch.Tensor) -> dict:
    """Tiles for the backward: smaller than the forward's (four fp32 scratch regions per slot).

    NCHW: 1 channel, 32×32 tiles, 128-element chunks, 3 programs per SM: slot ≈ 62 KB, ≈ 25 MB of
    scratch on an H100; the weight sums in a second sweep of the tile (TWO_SWEEPS). channels_last:
    4 channels, 16×16 tiles, 32-pixel chunks, 2 per SM (≈ 25 MB), one sweep.
    Why (sm_90 compiles of tests/triton_aot.py, Triton 3.6 = the GPU machine's, 3.9 = CI's): with one sweep
    NCHW took 255 registers and spilled 8 bytes of stack under 3.6 (3.9: 128, none; 8 channels × 64
    pixels spilled 80); two sweeps take 239 under 3.6, 128 under 3.9, no stack. channels_last spills
    16 bytes under 3.6 with two sweeps and none with one (168 registers; 148 under 3.9). The chunk
    loops keep LICM off: hoisted weight loads held every tap's weight in registers under 3.6.
    Interpreter: 4 channels, 16×16 tiles, 2 programs (one sweep). Tiles never exceed the image.
    """
    cl = x.shape[1] > 1 and x.stride(1) == 1
    if not gpu_tiles(x.device):
        cfg = dict(BLOCK_C=4, TH=16, TW=16, CHUNK=512, per_sm=0, programs=2, num_warps=4, TWO_SWEEPS=False)
    elif cl:
        cfg = dict(BLOCK_C=4, TH=16, TW=16, CHUNK=32, per_sm=2, programs=None, num_warps=4, TWO_SWEEPS=False)
    else:
        cfg = dict(BLOCK_C=1, TH=32, TW=32, CHUNK=128, per_sm=3, programs=None, num_warps=4, TWO_SWEEPS=True)
    cfg["TH"], cfg["TW"] = min(cfg["TH"], x.shape[2]), min(cfg["TW"], x.shape[3])
    return cfg


def strip_conv_single_pass_backward(grad, x, w0, b0, wf, bf, vf, ks) -> tuple[torch.Tensor, torch.Tensor]:
    """(gx in x's dtype and layout, (C, NTAP) fp32 tap sums laid out by :func:`tap_layout`).

    wf/bf/vf: three (C, K) fp32 horizontal weights, (C,) fp32 horizontal biases and vertical weights,
    padded with dummies where ks[i] == 0 (see ``strip_conv_split._pad3``); absent branches come last."""
    bsz, c, h, w = x.shape
    k0 = w0.shape[-1]
    lay = tap_layout(k0, ks)
    ntap_p2 = triton.next_power_of_2(lay["n"])
    gx = torch.empty_like(x)
    if x.numel() == 0:
        return gx, x.new_zeros((c, lay["n"]), dtype=torch.float32)
    p, q = max(ks) // 2, k0 // 2
    cfg = single_pass_backward_config(x)
    bc, th, tw = cfg["BLOCK_C"], cfg["TH"], cfg["TW"]
    n_cb = triton.cdiv(c, bc)
    n_tiles = bsz * n_cb * triton.cdiv(h, th) * triton.cdiv(w, tw)
    programs = max(1, min(cfg["programs"] or cfg["per_sm"] * sm_count(x.device), n_tiles))
    slot = bc * ((th + 2 * p) * (tw + 2 * p) + 3 * (th + 2 * p) * tw + 3 * (th + 2 * q) * (tw + 2 * q + 2 * p)
                 + (th + 2 * q) * (tw + 2 * q))
    scratch = torch.empty((programs, slot), device=x.device, dtype=torch.float32)
    part = torch.empty((n_tiles, bc, ntap_p2), device=x.device, dtype=torch.float32)
    w0f = w0.reshape(c, k0 * k0).to(torch.float32).contiguous()
    b0f = b0.to(torch.float32).contiguous()
    wrap_triton(_strip_conv_single_backward_kernel)[(programs,)](
        grad, x, w0f, b0f, *wf, *bf, *vf, gx, part, scratch,
        c, h, w, n_tiles, *grad.stride(), *x.stride(), *gx.stride(),
        K0=k0, K1=ks[0], K2=ks[1], K3=ks[2], P=p,
        OFF_WH1=lay["wh0"], OFF_WH2=lay["wh1"], OFF_WH3=lay["wh2"],
        OFF_WV1=lay["wv0"], OFF_WV2=lay["wv1"], OFF_WV3=lay["wv2"],
        OFF_B0=lay["b0"], OFF_BH1=lay["bh0"], OFF_BH2=lay["bh1"], OFF_BH3=lay["bh2"], OFF_BV=lay["bv"],
        NTAP_P2=ntap_p2, TH=th, TW=tw, BLOCK_C=bc, CHUNK=cfg["CHUNK"], INT64=needs_int64(grad, x, gx, part),
        TWO_SWEEPS=cfg["TWO_SWEEPS"], num_warps=cfg["num_warps"],
    )
    # tiles are numbered ((b · n_cb + cb) · n_th + th) · n_tw + tw: sum over b and the spatial tiles
    sums = part.view(bsz, n_cb, -1, bc, ntap_p2).sum(dim=(0, 2)).reshape(n_cb * bc, ntap_p2)[:c, :lay["n"]]
    return gx, sums
