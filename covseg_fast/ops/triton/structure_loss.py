"""Triton kernels of ``covseg::structure_loss`` (spec: ops/reference/structure_loss.py, MODELS.md §5.1).

Layout: logits z, target g, weight w are contiguous (B, 1, H, W), addressed as b·H·W + i·W + j.
All maths in fp32; z/g may be fp16/bf16/fp32. Every kernel works on 2-D tiles
(BLOCK_H rows × BLOCK_W columns of one sample); grid = (B · ⌈H/BLOCK_H⌉, ⌈W/BLOCK_W⌉).

Forward, two launches:
  1. ``_structure_loss_box_rows_kernel``:      t[b,i,j] = Σ_{|d| ≤ 15, 0 ≤ j+d < W} g[b,i,j+d]       (row pass, zero pad)
  2. ``_structure_loss_forward_kernel``: A = Σ_{|d| ≤ 15, 0 ≤ i+d < H} t[b,i+d,j] / 961        (column pass)
     w = 1 + 5|A − g|; bce = max(z,0) − z g + log(1 + e^{−|z|}); p = σ(z);
     writes w and, per tile, partial sums [Σ w p g, Σ w (p+g), Σ w, Σ w bce, Σ bce] to
     partial[b, tile, 0:5]; the host sums them per sample (deterministic, no atomics).
Backward, one launch (``_structure_loss_backward_kernel``), with per-sample coefficients coef[b] = (ca, cb, cbce):
     dz = w (ca g + cb (1 − g)) p (1 − p) + cbce (w if WEIGHTED else 1) (p − g).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

RADIUS = 15


@triton.jit
def _tile(H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """(b, rows (BLOCK_H,), cols (BLOCK_W,), tile index within the sample) of this program."""
    n_h = tl.cdiv(H, BLOCK_H)
    pid = tl.program_id(0)
    b = pid // n_h
    th = pid % n_h
    rows = th * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    return b, rows, cols, th * tl.num_programs(1) + tl.program_id(1)


@triton.jit
def _structure_loss_box_rows_kernel(g_ptr, t_ptr, H, W, R: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    b, rows, cols, _ = _tile(H, W, BLOCK_H, BLOCK_W)
    base = b.to(tl.int64) * H * W
    rmask = (rows < H)[:, None]
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for k in tl.static_range(0, 2 * R + 1):
        c = cols + (k - R)
        m = rmask & ((c >= 0) & (c < W))[None, :]
        acc += tl.load(g_ptr + base + rows[:, None] * W + c[None, :], mask=m, other=0.0).to(tl.float32)
    out = rmask & (cols < W)[None, :]
    tl.store(t_ptr + base + rows[:, None] * W + cols[None, :], acc, mask=out)


@triton.jit
def _structure_loss_forward_kernel(z_ptr, g_ptr, t_ptr, w_ptr, part_ptr, H, W, NT, R: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_W: tl.constexpr):
    b, rows, cols, tile = _tile(H, W, BLOCK_H, BLOCK_W)
    base = b.to(tl.int64) * H * W
    cmask = (cols < W)[None, :]
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for k in tl.static_range(0, 2 * R + 1):
        r = rows + (k - R)
        m = ((r >= 0) & (r < H))[:, None] & cmask
        acc += tl.load(t_ptr + base + r[:, None] * W + cols[None, :], mask=m, other=0.0)
    inside = (rows < H)[:, None] & cmask
    off = base + rows[:, None] * W + cols[None, :]
    g = tl.load(g_ptr + off, mask=inside, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + off, mask=inside, other=0.0).to(tl.float32)
    w = 1.0 + 5.0 * tl.abs(acc / ((2 * R + 1) * (2 * R + 1)) - g)
    tl.store(w_ptr + off, w, mask=inside)
    bce = tl.maximum(z, 0.0) - z * g + tl.log(1.0 + tl.exp(-tl.abs(z)))
    p = tl.sigmoid(z)
    w = tl.where(inside, w, 0.0)
    bce = tl.where(inside, bce, 0.0)
    p = tl.where(inside, p, 0.0)
    out = part_ptr + (b.to(tl.int64) * NT + tile) * 5
    tl.store(out + 0, tl.sum(tl.sum(w * p * g, axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(w * (p + g), axis=1), axis=0))
    tl.store(out + 2, tl.sum(tl.sum(w, axis=1), axis=0))
    tl.store(out + 3, tl.sum(tl.sum(w * bce, axis=1), axis=0))
    tl.store(out + 4, tl.sum(tl.sum(bce, axis=1), axis=0))


@triton.jit
def _structure_loss_backward_kernel(z_ptr, g_ptr, w_ptr, coef_ptr, dz_ptr, H, W, WEIGHTED: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_W: tl.constexpr):
    b, rows, cols, _ = _tile(H, W, BLOCK_H, BLOCK_W)
    inside = (rows < H)[:, None] & (cols < W)[None, :]
    off = b.to(tl.int64) * H * W + rows[:, None] * W + cols[None, :]
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


def _blocks(h: int, w: int) -> tuple[int, int]:
    """Tile (BLOCK_H, BLOCK_W): up to 128 columns, up to 1024 elements (2048 made the 31-tap box
    filter spill on sm_90: 255 registers + 8 bytes of stack; 1024 takes 149, tests/triton_aot.py)."""
    bw = max(16, min(128, triton.next_power_of_2(w)))
    bh = max(1, min(1024 // bw, triton.next_power_of_2(h)))
    return bh, bw


def forward(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,1,H,W) logits/target → (w (B,1,H,W) fp32, stats (B,5) fp32 [I, U, Σw, Σw·bce, Σbce])."""
    z, g = logits.contiguous(), target.contiguous()
    b, _, h, w = z.shape
    bh, bw = _blocks(h, w)
    grid = (b * triton.cdiv(h, bh), triton.cdiv(w, bw))
    n_tiles = triton.cdiv(h, bh) * triton.cdiv(w, bw)
    rows = torch.empty((b, 1, h, w), device=z.device, dtype=torch.float32)
    weight = torch.empty_like(rows)
    partial = torch.empty((b, n_tiles, 5), device=z.device, dtype=torch.float32)
    wrap_triton(_structure_loss_box_rows_kernel)[grid](g, rows, h, w, R=RADIUS, BLOCK_H=bh, BLOCK_W=bw)
    wrap_triton(_structure_loss_forward_kernel)[grid](z, g, rows, weight, partial, h, w, n_tiles, R=RADIUS, BLOCK_H=bh, BLOCK_W=bw)
    return weight, partial.sum(1)


def backward(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, coef: torch.Tensor,
             weighted: bool) -> torch.Tensor:
    """dz (logits' dtype) from per-sample coefficients coef (B, 3) fp32 = (ca, cb, cbce)."""
    z, g = logits.contiguous(), target.contiguous()
    b, _, h, w = z.shape
    bh, bw = _blocks(h, w)
    dz = torch.empty_like(z)
    grid = (b * triton.cdiv(h, bh), triton.cdiv(w, bw))
    wrap_triton(_structure_loss_backward_kernel)[grid](z, g, weight.contiguous(), coef.contiguous(), dz, h, w, WEIGHTED=weighted,
                                      BLOCK_H=bh, BLOCK_W=bw)
    return dz
