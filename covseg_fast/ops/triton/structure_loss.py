"""Triton kernels of ``covseg::structure_loss`` (spec: ops/reference/structure_loss.py, MODELS.md §5.1).

Layout: logits z, target g, weight w are contiguous (B, 1, H, W), addressed as rows r = b·H + i of
length W. All maths in fp32; z/g may be fp16/bf16/fp32.

Forward, two launches, grid (B·H, ⌈W / BLOCK_W⌉), one program = BLOCK_W pixels of one row:
  1. ``_box_rows``:   t[r, j] = Σ_{|d| ≤ 15, 0 ≤ j+d < W} g[r, j+d]           (row pass, zero pad)
  2. ``_structure_fwd``: A = Σ_{|d| ≤ 15, 0 ≤ i+d < H} t[b·H+i+d, j] / 961     (column pass)
     w = 1 + 5|A − g|; bce = max(z,0) − z g + log(1 + e^{−|z|}); p = σ(z);
     writes w, and per-program partial sums [Σ w p g, Σ w (p+g), Σ w, Σ w bce, Σ bce] to
     partial[r, block, 0:5]; the host sums them per sample (deterministic, no atomics).
Backward, one launch, same grid (``_structure_bwd``), with per-sample coefficients
coef[b] = (ca, cb, cbce) from the host:
     dz = w (ca g + cb (1 − g)) p (1 − p) + cbce (w if WEIGHTED else 1) (p − g).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

RADIUS = 15


@triton.jit
def _box_rows(g_ptr, t_ptr, W, R: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = cols < W
    acc = tl.zeros((BLOCK_W,), dtype=tl.float32)
    for k in tl.static_range(0, 2 * R + 1):
        c = cols + (k - R)
        m = inside & (c >= 0) & (c < W)
        acc += tl.load(g_ptr + row * W + c, mask=m, other=0.0).to(tl.float32)
    tl.store(t_ptr + row * W + cols, acc, mask=inside)


@triton.jit
def _structure_fwd(z_ptr, g_ptr, t_ptr, w_ptr, part_ptr, H, W, NB, R: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    i = row % H
    base_row = (row - i).to(tl.int64)  # b·H
    cols = blk * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = cols < W
    acc = tl.zeros((BLOCK_W,), dtype=tl.float32)
    for k in tl.static_range(0, 2 * R + 1):
        ii = tl.zeros((BLOCK_W,), dtype=tl.int32) + (i + (k - R))  # vector: the interpreter rejects scalar masks
        m = inside & (ii >= 0) & (ii < H)
        acc += tl.load(t_ptr + (base_row + ii) * W + cols, mask=m, other=0.0)
    off = row.to(tl.int64) * W + cols
    g = tl.load(g_ptr + off, mask=inside, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + off, mask=inside, other=0.0).to(tl.float32)
    w = 1.0 + 5.0 * tl.abs(acc / ((2 * R + 1) * (2 * R + 1)) - g)
    tl.store(w_ptr + off, w, mask=inside)
    bce = tl.maximum(z, 0.0) - z * g + tl.log(1.0 + tl.exp(-tl.abs(z)))
    p = tl.sigmoid(z)
    w = tl.where(inside, w, 0.0)
    bce = tl.where(inside, bce, 0.0)
    p = tl.where(inside, p, 0.0)
    out = part_ptr + (row.to(tl.int64) * NB + blk) * 5
    tl.store(out + 0, tl.sum(w * p * g, axis=0))
    tl.store(out + 1, tl.sum(w * (p + g), axis=0))
    tl.store(out + 2, tl.sum(w, axis=0))
    tl.store(out + 3, tl.sum(w * bce, axis=0))
    tl.store(out + 4, tl.sum(bce, axis=0))


@triton.jit
def _structure_bwd(z_ptr, g_ptr, w_ptr, coef_ptr, dz_ptr, H, W, WEIGHTED: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0)
    b = row // H
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = cols < W
    off = row.to(tl.int64) * W + cols
    z = tl.load(z_ptr + off, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + off, mask=inside, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + off, mask=inside, other=0.0)
    ca = tl.load(coef_ptr + b * 3 + 0)
    cb = tl.load(coef_ptr + b * 3 + 1)
    cbce = tl.load(coef_ptr + b * 3 + 2)
    p = tl.sigmoid(z)
    d = w * (ca * g + cb * (1.0 - g)) * p * (1.0 - p)
    if WEIGHTED:
        d += cbce * w * (p - g)
    else:
        d += cbce * (p - g)
    tl.store(dz_ptr + off, d.to(dz_ptr.dtype.element_ty), mask=inside)


def _block_w(w: int) -> int:
    return max(16, min(512, triton.next_power_of_2(w)))


def forward(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,1,H,W) logits/target → (w (B,1,H,W) fp32, stats (B,5) fp32 [I, U, Σw, Σw·bce, Σbce])."""
    z, g = logits.contiguous(), target.contiguous()
    b, _, h, w = z.shape
    block = _block_w(w)
    nb = triton.cdiv(w, block)
    rows = torch.empty((b, 1, h, w), device=z.device, dtype=torch.float32)
    weight = torch.empty_like(rows)
    partial = torch.empty((b * h, nb, 5), device=z.device, dtype=torch.float32)
    grid = (b * h, nb)
    wrap_triton(_box_rows)[grid](g, rows, w, R=RADIUS, BLOCK_W=block)
    wrap_triton(_structure_fwd)[grid](z, g, rows, weight, partial, h, w, nb, R=RADIUS, BLOCK_W=block)
    return weight, partial.view(b, h * nb, 5).sum(1)


def backward(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, coef: torch.Tensor,
             weighted: bool) -> torch.Tensor:
    """dz (logits' dtype) from per-sample coefficients coef (B, 3) fp32 = (ca, cb, cbce)."""
    z, g = logits.contiguous(), target.contiguous()
    b, _, h, w = z.shape
    block = _block_w(w)
    dz = torch.empty_like(z)
    wrap_triton(_structure_bwd)[(b * h, triton.cdiv(w, block))](
        z, g, weight.contiguous(), coef.contiguous(), dz, h, w, WEIGHTED=weighted, BLOCK_W=block)
    return dz
