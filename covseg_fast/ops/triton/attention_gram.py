"""Channel attention with a materialised fp32 C×C energy ("gram" path): Triton kernels.

One batch b; x (C, N) with arbitrary strides, sign s = +1 (pfnet) or −1 (danet), optional γ:

    E = X Xᵀ (fp32)      P = softmax_row(s·E)      lse_i = log Σ_j exp(s·E_ij)
    out = P X             (γ given: out = γ·P X + x, the residual epilogue)

Forward, three launches:
1. ``_channel_gram_partial_kernel``: partial Gram matrices over a split of N, (B, SPLIT, C, C) fp32. A split-N reduction
   without atomics, so results do not depend on scheduling.
2. ``_channel_gram_softmax_kernel``: sums the SPLIT partials, row softmax in fp32 (base 2), writes P (B, C, C) fp32 and lse.
3. ``_channel_gram_apply_kernel``: out = P X, a GEMM over channels with the γ·out + x epilogue.

Backward (dO = γ·dY; with delta_i = Σ_j P_ij dP_ij − dlse_i, the FA2 identity in matrix form):
    dP = dO Xᵀ,   dS = P ⊙ (dP − delta),   dX = Pᵀ dO + s·(dS + dSᵀ) X   (+ dY, the residual),
    dγ = Σ_b Σ_i r_i,   r_i = Σ_j P_ij (dY Xᵀ)_ij = Σ_n dY_in · (P X)_in.
So no attention output is needed: neither saved nor recomputed. Three launches:
1. ``_channel_gram_partial_kernel`` with DUAL: E (recomputed, cheaper than saving it) and D = dY Xᵀ in one sweep over N.
2. ``_channel_gram_backward_scores_kernel``: P = exp(s·E − lse), r, delta, dS; writes γ·P and dS (B, C, C) fp32 and r (B, C).
3. ``_channel_gram_backward_x_kernel``: dX = (γP)ᵀ dY + s·(dS + dSᵀ) X (+ dY), a GEMM over channels reading dS both ways.

Accumulation is fp32 everywhere; fp32 inputs use IEEE dots. P and dS are cast to x's dtype as GEMM
operands (as the flash kernels do with p and ds).
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _channel_gram_partial_kernel(A, D, Bm, WS, WS2, C, CC, N, CHUNK, NUM_J,
                s_ab, s_ac, s_an, s_db, s_dc, s_dn, s_bb, s_bc, s_bn,
                BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, DUAL: tl.constexpr,
                PREC: tl.constexpr):
    """Partial Gram tiles. Grid (NUM_I·NUM_J, B, SPLIT): tile (i, j) of A Bᵀ (and, with DUAL, D Bᵀ) summed
    over pixels [split·CHUNK, (split+1)·CHUNK), written to WS[b, split] (and WS2[b, split])."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    sp = tl.program_id(2)
    num_split = tl.num_programs(2)
    offs_i = (pid // NUM_J) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = (pid % NUM_J) * BLOCK_J + tl.arange(0, BLOCK_J)
    a_base, b_base = A + b * s_ab, Bm + b * s_bb
    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    start = sp * CHUNK
    for n0 in range(start, tl.minimum(start + CHUNK, N), BLOCK_K):
        offs_k = n0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < N
        bt = tl.load(b_base + offs_j[None, :] * s_bc + offs_k[:, None] * s_bn,
                     mask=kmask[:, None] & (offs_j[None, :] < C), other=0.0)  # (BLOCK_K, BLOCK_J)
        at = tl.load(a_base + offs_i[:, None] * s_ac + offs_k[None, :] * s_an,
                     mask=(offs_i[:, None] < C) & kmask[None, :], other=0.0)
        acc = tl.dot(at, bt, acc, input_precision=PREC)
        if DUAL:
            dt = tl.load(D + b * s_db + offs_i[:, None] * s_dc + offs_k[None, :] * s_dn,
                         mask=(offs_i[:, None] < C) & kmask[None, :], other=0.0)
            acc2 = tl.dot(dt, bt, acc2, input_precision=PREC)
    off = (b * num_split + sp) * CC + offs_i[:, None] * C + offs_j[None, :]
    mask = (offs_i[:, None] < C) & (offs_j[None, :] < C)
    tl.store(WS + off, acc, mask=mask)
    if DUAL:
        tl.store(WS2 + off, acc2, mask=mask)


@triton.jit
def _split_sum(WS, base, rows, cols, C, SPLIT, cc):
    """Σ over the SPLIT partials of one (rows × cols) tile; 0 outside the matrix."""
    mask = (rows[:, None] < C) & (cols[None, :] < C)
    ptr = WS + base + rows[:, None] * C + cols[None, :]
    tile = tl.load(ptr, mask=mask, other=0.0)
    for sp in range(1, SPLIT):
        tile += tl.load(ptr + sp * cc, mask=mask, other=0.0)
    return tile


@triton.jit
def _channel_gram_softmax_kernel(WS, P, LSE, C, CC, SPLIT, sign_log2e,
                   BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    """Grid (cdiv(C, BLOCK_R), B): rows of P = softmax(s·E) and their lse, two sweeps over the columns
    (online max/sum, then write), each summing the SPLIT partials of E."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cc = CC
    base = b * SPLIT * cc
    m = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    ll = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for j0 in range(0, C, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        e = _split_sum(WS, base, rows, cols, C, SPLIT, cc)
        e = tl.where(cols[None, :] < C, e * sign_log2e, float("-inf"))  # base-2 logits
        m_new = tl.maximum(m, tl.max(e, 1))  # finite: every column block holds ≥ 1 column
        ll = ll * tl.exp2(m - m_new) + tl.sum(tl.exp2(e - m_new[:, None]), 1)
        m = m_new
    lse2 = m + tl.log2(ll)
    tl.store(LSE + b * C + rows, lse2 * 0.6931471805599453, mask=rows < C)  # × ln 2
    for j0 in range(0, C, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        e = _split_sum(WS, base, rows, cols, C, SPLIT, cc)
        p = tl.exp2(tl.where(cols[None, :] < C, e * sign_log2e - lse2[:, None], float("-inf")))
        tl.store(P + b * cc + rows[:, None] * C + cols[None, :], p, mask=(rows[:, None] < C) & (cols[None, :] < C))


@triton.jit
def _rows_and_cols(C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Channel rows and pixel columns of this program of the product kernels. Both live on grid axis 0,
    row blocks fastest (the programs of one pixel block share its x tile in L2): axes 1 and 2 stop at
    65,535, which N / BLOCK_N passes above 8.4M pixels."""
    n_rows = tl.cdiv(C, BLOCK_M)
    pid = tl.program_id(0)
    return (pid % n_rows) * BLOCK_M + tl.arange(0, BLOCK_M), (pid // n_rows) * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _channel_gram_apply_kernel(P, X, O, GAMMA, C, CC, N,
                 s_xb, s_xc, s_xn, s_ob, s_oc, s_on,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_GAMMA: tl.constexpr,
                 PREC: tl.constexpr):
    """Grid (cdiv(C, BLOCK_M) · cdiv(N, BLOCK_N), B): out tile = P[rows, :] X[:, cols] (γ: γ·that + x)."""
    rows, cols = _rows_and_cols(C, BLOCK_M, BLOCK_N)
    b = tl.program_id(1).to(tl.int64)
    x_base = X + b * s_xb
    p_base = P + b * CC
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        pt = tl.load(p_base + rows[:, None] * C + ks[None, :], mask=(rows[:, None] < C) & (ks[None, :] < C), other=0.0)
        xt = tl.load(x_base + ks[:, None] * s_xc + cols[None, :] * s_xn,
                     mask=(ks[:, None] < C) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(pt.to(xt.dtype), xt, acc, input_precision=PREC)
    mask = (rows[:, None] < C) & (cols[None, :] < N)
    if HAS_GAMMA:  # residual epilogue; these x rows were just read by the loop above (L2)
        g = tl.load(GAMMA).to(tl.float32)
        xr = tl.load(x_base + rows[:, None] * s_xc + cols[None, :] * s_xn, mask=mask, other=0.0)
        acc = acc * g + xr.to(tl.float32)
    tl.store(O + b * s_ob + rows[:, None] * s_oc + cols[None, :] * s_on, acc.to(O.dtype.element_ty), mask=mask)


@triton.jit
def _probs(WS_E, base, rows, cols, C, SPLIT, cc, valid, sign_log2e, lse2):
    """P = exp(s·E − lse) on one tile, 0 outside (masked before exp2: no overflow on padding)."""
    e = _split_sum(WS_E, base, rows, cols, C, SPLIT, cc)
    return tl.exp2(tl.where(valid, e * sign_log2e - lse2[:, None], float("-inf")))


@triton.jit
def _channel_gram_backward_scores_kernel(WS_E, WS_D, LSE, DLSE, GAMMA, PG, DS, R, C, CC, SPLIT, sign_log2e,
                       BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, HAS_DLSE: tl.constexpr,
                       HAS_GAMMA: tl.constexpr):
    """Grid (cdiv(C, BLOCK_R), B). P_ij = exp(s·E_ij − lse_i), D = dY Xᵀ (summed partials);
    r_i = Σ_j P_ij D_ij, delta_i = γ r_i − dlse_i, dS = P (γ D − delta). Writes γP, dS and r."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < C
    cc = CC
    base = b * SPLIT * cc
    lse2 = tl.load(LSE + b * C + rows, mask=rmask, other=0.0) * 1.4426950408889634
    g = 1.0
    if HAS_GAMMA:
        g = tl.load(GAMMA).to(tl.float32)
    r = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for j0 in range(0, C, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        valid = rmask[:, None] & (cols[None, :] < C)
        p = _probs(WS_E, base, rows, cols, C, SPLIT, cc, valid, sign_log2e, lse2)
        r += tl.sum(p * _split_sum(WS_D, base, rows, cols, C, SPLIT, cc), 1)
    delta = r * g
    if HAS_DLSE:
        delta -= tl.load(DLSE + b * C + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(R + b * C + rows, r, mask=rmask)
    for j0 in range(0, C, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        valid = rmask[:, None] & (cols[None, :] < C)
        p = _probs(WS_E, base, rows, cols, C, SPLIT, cc, valid, sign_log2e, lse2)
        ds = p * (_split_sum(WS_D, base, rows, cols, C, SPLIT, cc) * g - delta[:, None])
        off = b * cc + rows[:, None] * C + cols[None, :]
        tl.store(PG + off, p * g, mask=valid)
        tl.store(DS + off, ds, mask=valid)


@triton.jit
def _channel_gram_backward_x_kernel(PG, DS, X, DY, DX, C, CC, N, sign,
                  s_xb, s_xc, s_xn, s_yb, s_yc, s_yn, s_gb, s_gc, s_gn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_GAMMA: tl.constexpr,
                  PREC: tl.constexpr):
    """Grid (cdiv(C, BLOCK_M) · cdiv(N, BLOCK_N), B): dX[m, cols] = Σ_k (γP)_km dY[k] + s (dS_mk + dS_km) X[k]
    (+ dY[m, cols] with γ: the residual's gradient)."""
    rows, cols = _rows_and_cols(C, BLOCK_M, BLOCK_N)
    b = tl.program_id(1).to(tl.int64)
    pg_base, ds_base = PG + b * CC, DS + b * CC
    x_base, dy_base = X + b * s_xb, DY + b * s_yb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        sq = (rows[:, None] < C) & (ks[None, :] < C)
        kn = (ks[:, None] < C) & (cols[None, :] < N)
        pgt = tl.load(pg_base + ks[None, :] * C + rows[:, None], mask=sq, other=0.0)  # (γP)ᵀ[rows, ks]
        w = tl.load(ds_base + rows[:, None] * C + ks[None, :], mask=sq, other=0.0)
        w += tl.load(ds_base + ks[None, :] * C + rows[:, None], mask=sq, other=0.0)
        dyt = tl.load(dy_base + ks[:, None] * s_yc + cols[None, :] * s_yn, mask=kn, other=0.0)
        xt = tl.load(x_base + ks[:, None] * s_xc + cols[None, :] * s_xn, mask=kn, other=0.0)
        acc = tl.dot(pgt.to(dyt.dtype), dyt, acc, input_precision=PREC)
        acc = tl.dot((w * sign).to(xt.dtype), xt, acc, input_precision=PREC)
    mask = (rows[:, None] < C) & (cols[None, :] < N)
    if HAS_GAMMA:
        acc += tl.load(dy_base + rows[:, None] * s_yc + cols[None, :] * s_yn, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + b * s_gb + rows[:, None] * s_gc + cols[None, :] * s_gn, acc.to(DX.dtype.element_ty), mask=mask)
