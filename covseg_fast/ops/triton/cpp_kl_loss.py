"""Triton kernels of ``covseg::cpp_kl_loss`` (CPP pooling + log-softmax + KL in one pass).

Formula (per pooled pixel p = (b, i, j), classes k < K, window s×s):

    t[p, k]    = #{(u, v) in window(i, j) : L[b, u, v] = k, L ≠ ignore} / s²
    logq[p, k] = z[p, k] − logsumexp_k z[p, :]
    kl[p]      = Σ_k [t > 0] · t·(log t − logq)
    loss       = Σ_p kl[p] / P,          P = B·h·w
    ∂loss/∂z   = g · (softmax(z)·Σ_k t − t) / P

Layout: z (B, K, h, w) contiguous (class stride h·w), labels (B, H, W) contiguous with
H // s = h, W // s = w (rows/columns past the last full window are never read).
Grid: one program per BLOCK_P consecutive pooled pixels (flattened b, i, j). Each program loads a
(BLOCK_P, BLOCK_S) tile of labels (BLOCK_S = next_pow2(s²) window slots), counts classes through a
(BLOCK_P, BLOCK_S, BLOCK_K) compare, and a (BLOCK_P, BLOCK_K) tile of logits. The forward writes one
partial sum per program (summed afterwards in a fixed order: deterministic, no atomics); the backward
writes dz. Accumulation dtype = the partial/grad buffer's dtype (float32, or float64 for float64 logits).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton


@triton.jit
def _cpp_target_and_logq(z_ptr, lab_ptr, pid, P, K, h, w, H, W, s, ignore, ACC: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    hw = h * w
    b = p // hw
    r = p % hw
    i = r // w
    j = r % w
    kk = tl.arange(0, BLOCK_K)
    km = kk < K
    q = tl.arange(0, BLOCK_S)
    qm = q < s * s
    dy = q // s
    dx = q % s
    row = i[:, None] * s + dy[None, :]
    col = j[:, None] * s + dx[None, :]
    lab_off = b[:, None].to(tl.int64) * H * W + row * W + col
    lm = pm[:, None] & qm[None, :]
    # validity in the labels' own width (an int64 label 2³² + 1 must not become class 1), and < K: a label
    # of K..BLOCK_K−1 would otherwise land in a padded class and enter Σ_k t (what the reference counts nowhere)
    raw = tl.load(lab_ptr + lab_off, mask=lm, other=0)
    valid = lm & (raw >= 0) & (raw < K) & (raw != ignore)
    lab = tl.where(valid, raw, 0).to(tl.int32)
    hit = (lab[:, :, None] == kk[None, None, :]) & valid[:, :, None]
    t = tl.sum(hit.to(ACC), axis=1) / (s * s)                               # (BLOCK_P, BLOCK_K)
    z_off = b[:, None].to(tl.int64) * K * hw + kk[None, :] * hw + r[:, None]
    zm = pm[:, None] & km[None, :]
    z = tl.load(z_ptr + z_off, mask=zm, other=0.0).to(ACC)
    z = tl.where(km[None, :], z, float("-inf"))
    zmax = tl.max(z, axis=1)
    zs = z - zmax[:, None]
    lse = tl.log(tl.sum(tl.exp(zs), axis=1))
    logq = zs - lse[:, None]
    return t, logq, pm, km, z_off, zm


@triton.jit
def _cpp_kl_forward_kernel(z_ptr, lab_ptr, part_ptr, P, K, h, w, H, W, s, ignore,
                      BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    ACC: tl.constexpr = part_ptr.dtype.element_ty
    t, logq, pm, km, z_off, zm = _cpp_target_and_logq(z_ptr, lab_ptr, pid, P, K, h, w, H, W, s, ignore, ACC,
                                                      BLOCK_P, BLOCK_K, BLOCK_S)
    pos = (t > 0) & zm
    safe_t = tl.where(pos, t, 1.0)
    kl = tl.where(pos, t * (tl.log(safe_t) - logq), 0.0)
    tl.store(part_ptr + pid, tl.sum(tl.sum(kl, axis=1), axis=0))


@triton.jit
def _cpp_kl_backward_kernel(g_ptr, z_ptr, lab_ptr, dz_ptr, P, K, h, w, H, W, s, ignore,
                      BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    ACC: tl.constexpr = g_ptr.dtype.element_ty
    t, logq, pm, km, z_off, zm = _cpp_target_and_logq(z_ptr, lab_ptr, pid, P, K, h, w, H, W, s, ignore, ACC,
                                                      BLOCK_P, BLOCK_K, BLOCK_S)
    g = tl.load(g_ptr).to(ACC) / P
    tsum = tl.sum(t, axis=1)
    dz = (tl.exp(logq) * tsum[:, None] - t) * g
    tl.store(dz_ptr + z_off, dz.to(dz_ptr.dtype.element_ty), mask=zm)


def block_sizes(num_classes: int, scale: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_K, BLOCK_S): window slots and classes padded to powers of two, ~4096-element tiles."""
    block_k = triton.next_power_of_2(max(num_classes, 1))
    block_s = triton.next_power_of_2(scale * scale)
    block_p = max(1, min(128, 4096 // (block_k * block_s)))
    return block_p, block_k, block_s


def _accumulator_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _launch_args(logits, labels, scale, ignore_index):
    b, k, h, w = logits.shape
    big_h, big_w = labels.shape[1:]
    n = b * h * w
    block_p, block_k, block_s = block_sizes(k, scale)
    grid = (max(1, triton.cdiv(n, block_p)),)
    ignore = -1 if ignore_index is None else int(ignore_index)
    return grid, (n, k, h, w, big_h, big_w, scale, ignore), dict(BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_S=block_s)


def cpp_kl_forward(logits: torch.Tensor, labels: torch.Tensor, scale: int, ignore_index) -> torch.Tensor:
    """The loss (0-dim, fp32 or fp64): per-program partial sums in a fixed order, divided by B·h·w."""
    logits, labels = logits.contiguous(), labels.contiguous()
    grid, args, meta = _launch_args(logits, labels, scale, ignore_index)
    partial = torch.empty(grid[0], device=logits.device, dtype=_accumulator_dtype(logits))
    wrap_triton(_cpp_kl_forward_kernel)[grid](logits, labels, partial, *args, **meta)
    return partial.sum() / max(args[0], 1)


def cpp_kl_backward(grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, scale: int,
                    ignore_index) -> torch.Tensor:
    """∂loss/∂logits in the logits' dtype, for the upstream gradient ``grad`` (0-dim)."""
    logits, labels = logits.contiguous(), labels.contiguous()
    grid, args, meta = _launch_args(logits, labels, scale, ignore_index)
    dz = torch.empty_like(logits)
    g = grad.reshape(1).to(_accumulator_dtype(logits)).contiguous()
    wrap_triton(_cpp_kl_backward_kernel)[grid](g, logits, labels, dz, *args, **meta)
    return dz
