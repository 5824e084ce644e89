"""Flash-attention-style Triton kernels for position (PAM) and channel (CAM) attention.

Formula (one batch b; q_i = q[b, :, i], k_j = k[b, :, j] are Dqk-vectors, v_j = v[b, :, j] a Dv-vector):

    s_ij = scale · q_i·k_j          p_ij = exp(s_ij − lse_i),  lse_i = log Σ_j exp(s_ij)
    out[b, :, i] = Σ_j p_ij v_j

Optional forward epilogue (channel attention's γ·out + x): out = γ·attention + residual.

Layout: q, k (B, Dqk, N), v and out (B, Dv, N), arbitrary strides (so channel attention runs on
transposed views with no copy); lse and delta (B, N) fp32 contiguous. The N×N matrix is never
stored: the forward keeps a running max / sum (online softmax, base 2) and writes only out and
lse, so memory is O(N·(Dqk + Dv)). Accumulation is fp32; fp32 inputs use IEEE dots (no TF32).

Large head dims are tiled, never held whole:
- the qk dim is looped in BLOCK_D chunks inside every score computation (NUM_D chunks);
- the value dim is split across program ids (with the query blocks on grid axis 0, BLOCK_C per program); each such
  program recomputes the scores and softmax statistics of its query block ("split C, recompute"),
  which costs extra QKᵀ work when Dv ≫ BLOCK_C but needs no second pass or workspace.

Backward (FA2 with delta_i = Σ_c dO[c,i]·O[c,i] − dlse_i, computed by the launcher):
    dp_ij = dO_i·v_j,  ds_ij = p_ij (dp_ij − delta_i)
    dq_i = scale Σ_j ds_ij k_j,   dk_j = scale Σ_i ds_ij q_i,   dv_j = Σ_i p_ij dO_i
Three kernels, each recomputing p from q, k and lse: dq (grid: query blocks · Dqk tiles × B),
dk (key blocks · Dqk tiles × B), dv (key blocks · Dv tiles × B). No atomics.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _block_and_tile(N, BLOCK: tl.constexpr):
    """(sequence block, head-dim tile) of this program: both live on grid axis 0, blocks fastest (the
    programs of one tile sweep the sequence together), since axes 1 and 2 stop at 65,535 and channel
    attention's head dim is N pixels."""
    n_blocks = tl.cdiv(N, BLOCK)
    pid = tl.program_id(0)
    return pid % n_blocks, pid // n_blocks


@triton.jit
def _scores(q_base, k_base, offs_m, offs_n, N, DQK, s_qd, s_qn, s_kd, s_kn,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_D: tl.constexpr,
            PREC: tl.constexpr):
    """Raw scores Σ_d q[d, m] k[d, n] as a (BLOCK_M, BLOCK_N) fp32 tile, looping over the qk dim."""
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(NUM_D):
        d = d0 * BLOCK_D + offs_d
        qt = tl.load(q_base + offs_m[:, None] * s_qn + d[None, :] * s_qd,
                     mask=(offs_m[:, None] < N) & (d[None, :] < DQK), other=0.0)
        kt = tl.load(k_base + d[:, None] * s_kd + offs_n[None, :] * s_kn,
                     mask=(d[:, None] < DQK) & (offs_n[None, :] < N), other=0.0)
        s = tl.dot(qt, kt, s, input_precision=PREC)
    return s


@triton.jit
def _dprods(do_base, v_base, offs_m, offs_n, N, DV, s_doc, s_don, s_vc, s_vn,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, NUM_C: tl.constexpr,
            PREC: tl.constexpr):
    """dp[m, n] = Σ_c dO[c, m] v[c, n] as a (BLOCK_M, BLOCK_N) fp32 tile, looping over the value dim."""
    dp = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    for c0 in range(NUM_C):
        c = c0 * BLOCK_C + offs_c
        dot_ = tl.load(do_base + offs_m[:, None] * s_don + c[None, :] * s_doc,
                       mask=(offs_m[:, None] < N) & (c[None, :] < DV), other=0.0)
        vt = tl.load(v_base + c[:, None] * s_vc + offs_n[None, :] * s_vn,
                     mask=(c[:, None] < DV) & (offs_n[None, :] < N), other=0.0)
        dp = tl.dot(dot_, vt, dp, input_precision=PREC)
    return dp


@triton.jit
def _attention_forward_kernel(Q, K, V, O, LSE, R, GAMMA, N, DQK, DV, scale_log2e,
                  s_qb, s_qd, s_qn, s_kb, s_kd, s_kn, s_vb, s_vc, s_vn, s_ob, s_oc, s_on, s_rb, s_rc, s_rn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                  NUM_D: tl.constexpr, HAS_RES: tl.constexpr, PREC: tl.constexpr):
    """Forward. Grid (cdiv(N, BLOCK_M) · cdiv(DV, BLOCK_C), B): one query block × one value tile.
    HAS_RES: the output is γ·attention + R (R shaped and strided like O; γ a 1-element tensor)."""
    pid_m, pid_c = _block_and_tile(N, BLOCK_M)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    q_base = Q + b * s_qb
    k_base = K + b * s_kb
    v_base = V + b * s_vb
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    if NUM_D == 1:  # small qk dim: keep the query tile in registers for the whole sweep
        offs_d = tl.arange(0, BLOCK_D)
        q_tile = tl.load(q_base + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd,
                         mask=(offs_m[:, None] < N) & (offs_d[None, :] < DQK), other=0.0)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if NUM_D == 1:
            k_tile = tl.load(k_base + offs_d[:, None] * s_kd + offs_n[None, :] * s_kn,
                             mask=(offs_d[:, None] < DQK) & (offs_n[None, :] < N), other=0.0)
            s = tl.dot(q_tile, k_tile, input_precision=PREC)
        else:
            s = _scores(q_base, k_base, offs_m, offs_n, N, DQK, s_qd, s_qn, s_kd, s_kn,
                        BLOCK_M, BLOCK_N, BLOCK_D, NUM_D, PREC)
        s = tl.where(offs_n[None, :] < N, s * scale_log2e, float("-inf"))  # base-2 logits
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every key block holds ≥ 1 valid key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_tile = tl.load(v_base + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc,
                         mask=(offs_n[:, None] < N) & (offs_c[None, :] < DV), other=0.0)
        acc = tl.dot(p.to(v_tile.dtype), v_tile, acc * alpha[:, None], input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    if HAS_RES:
        res = tl.load(R + b * s_rb + offs_m[:, None] * s_rn + offs_c[None, :] * s_rc,
                      mask=(offs_m[:, None] < N) & (offs_c[None, :] < DV), other=0.0)
        acc = acc * tl.load(GAMMA).to(tl.float32) + res.to(tl.float32)
    tl.store(O + b * s_ob + offs_m[:, None] * s_on + offs_c[None, :] * s_oc, acc.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < N) & (offs_c[None, :] < DV))
    if pid_c == 0:
        tl.store(LSE + b * N + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=offs_m < N)


@triton.jit
def _attention_backward_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, N, DQK, DV, scale, scale_log2e,
                     s_qb, s_qd, s_qn, s_kb, s_kd, s_kn, s_vb, s_vc, s_vn, s_dob, s_doc, s_don,
                     s_dqb, s_dqd, s_dqn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                     NUM_D: tl.constexpr, NUM_C: tl.constexpr, PREC: tl.constexpr):
    """dq. Grid (cdiv(N, BLOCK_M) · cdiv(DQK, BLOCK_D), B): one query block × one qk tile, sweeping keys."""
    pid_m, pid_d = _block_and_tile(N, BLOCK_M)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_t = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    q_base, k_base, v_base, do_base = Q + b * s_qb, K + b * s_kb, V + b * s_vb, DO + b * s_dob
    lse2 = tl.load(LSE + b * N + offs_m, mask=offs_m < N, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + b * N + offs_m, mask=offs_m < N, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        s = _scores(q_base, k_base, offs_m, offs_n, N, DQK, s_qd, s_qn, s_kd, s_kn,
                    BLOCK_M, BLOCK_N, BLOCK_D, NUM_D, PREC)
        p = tl.where(offs_n[None, :] < N, tl.exp2(s * scale_log2e - lse2[:, None]), 0.0)
        dp = _dprods(do_base, v_base, offs_m, offs_n, N, DV, s_doc, s_don, s_vc, s_vn,
                     BLOCK_M, BLOCK_N, BLOCK_C, NUM_C, PREC)
        ds = p * (dp - delta[:, None])
        k_tile = tl.load(k_base + offs_n[:, None] * s_kn + offs_t[None, :] * s_kd,
                         mask=(offs_n[:, None] < N) & (offs_t[None, :] < DQK), other=0.0)
        acc = tl.dot(ds.to(k_tile.dtype), k_tile, acc, input_precision=PREC)
    tl.store(DQ + b * s_dqb + offs_m[:, None] * s_dqn + offs_t[None, :] * s_dqd, (acc * scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < N) & (offs_t[None, :] < DQK))


@triton.jit
def _attention_backward_dk_kernel(Q, K, V, DO, LSE, DELTA, DK, N, DQK, DV, scale, scale_log2e,
                     s_qb, s_qd, s_qn, s_kb, s_kd, s_kn, s_vb, s_vc, s_vn, s_dob, s_doc, s_don,
                     s_dkb, s_dkd, s_dkn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                     NUM_D: tl.constexpr, NUM_C: tl.constexpr, PREC: tl.constexpr):
    """dk. Grid (cdiv(N, BLOCK_N) · cdiv(DQK, BLOCK_D), B): one key block × one qk tile, sweeping queries."""
    pid_n, pid_d = _block_and_tile(N, BLOCK_N)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_t = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    q_base, k_base, v_base, do_base = Q + b * s_qb, K + b * s_kb, V + b * s_vb, DO + b * s_dob
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        lse2 = tl.load(LSE + b * N + offs_m, mask=offs_m < N, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + b * N + offs_m, mask=offs_m < N, other=0.0)
        s = _scores(q_base, k_base, offs_m, offs_n, N, DQK, s_qd, s_qn, s_kd, s_kn,
                    BLOCK_M, BLOCK_N, BLOCK_D, NUM_D, PREC)
        valid = (offs_m[:, None] < N) & (offs_n[None, :] < N)
        p = tl.where(valid, tl.exp2(s * scale_log2e - lse2[:, None]), 0.0)
        dp = _dprods(do_base, v_base, offs_m, offs_n, N, DV, s_doc, s_don, s_vc, s_vn,
                     BLOCK_M, BLOCK_N, BLOCK_C, NUM_C, PREC)
        ds = p * (dp - delta[:, None])
        q_tile = tl.load(q_base + offs_m[:, None] * s_qn + offs_t[None, :] * s_qd,
                         mask=(offs_m[:, None] < N) & (offs_t[None, :] < DQK), other=0.0)
        acc = tl.dot(tl.trans(ds.to(q_tile.dtype)), q_tile, acc, input_precision=PREC)
    tl.store(DK + b * s_dkb + offs_n[:, None] * s_dkn + offs_t[None, :] * s_dkd, (acc * scale).to(DK.dtype.element_ty),
             mask=(offs_n[:, None] < N) & (offs_t[None, :] < DQK))


@triton.jit
def _attention_backward_dv_kernel(Q, K, DO, LSE, DV_OUT, N, DQK, DV, scale_log2e,
                     s_qb, s_qd, s_qn, s_kb, s_kd, s_kn, s_dob, s_doc, s_don, s_dvb, s_dvc, s_dvn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                     NUM_D: tl.constexpr, PREC: tl.constexpr):
    """dv. Grid (cdiv(N, BLOCK_N) · cdiv(DV, BLOCK_C), B): one key block × one value tile, sweeping queries."""
    pid_n, pid_c = _block_and_tile(N, BLOCK_N)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    q_base, k_base, do_base = Q + b * s_qb, K + b * s_kb, DO + b * s_dob
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        lse2 = tl.load(LSE + b * N + offs_m, mask=offs_m < N, other=0.0) * 1.4426950408889634
        s = _scores(q_base, k_base, offs_m, offs_n, N, DQK, s_qd, s_qn, s_kd, s_kn,
                    BLOCK_M, BLOCK_N, BLOCK_D, NUM_D, PREC)
        valid = (offs_m[:, None] < N) & (offs_n[None, :] < N)
        p = tl.where(valid, tl.exp2(s * scale_log2e - lse2[:, None]), 0.0)
        do_tile = tl.load(do_base + offs_m[:, None] * s_don + offs_c[None, :] * s_doc,
                          mask=(offs_m[:, None] < N) & (offs_c[None, :] < DV), other=0.0)
        acc = tl.dot(tl.trans(p.to(do_tile.dtype)), do_tile, acc, input_precision=PREC)
    tl.store(DV_OUT + b * s_dvb + offs_n[:, None] * s_dvn + offs_c[None, :] * s_dvc, acc.to(DV_OUT.dtype.element_ty),
             mask=(offs_n[:, None] < N) & (offs_c[None, :] < DV))
