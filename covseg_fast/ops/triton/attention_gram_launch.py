"""Launchers for the gram-path channel attention kernels in ``attention_gram.py``.

x (B, C, N) may be any strided view; outputs are allocated by the caller (``empty_like(x)`` keeps a
channels_last-derived layout). Workspaces: (B, SPLIT, C, C) fp32 partials (two in the backward),
P or γP and dS (B, C, C) fp32, lse / r (B, C) fp32: O(B·SPLIT·C²), with SPLIT·tiles·B ≈ 2 programs per SM,
so the partials stay ≈ 264 tiles of 64×64 fp32 (4.3 MB) whenever the split is > 1.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from torch.library import wrap_triton

from .attention_gram import (LOG2E, _channel_gram_apply_kernel, _channel_gram_backward_scores_kernel,
                             _channel_gram_backward_x_kernel, _channel_gram_partial_kernel, _channel_gram_softmax_kernel)
from .device import gpu_tiles, sm_count

# Tile sizes, not autotuned (no GPU was lent while writing them). CUDA: 64-wide GEMM tiles for 16-bit
# operands, 32 for fp32 (IEEE dots hold more registers), 4 warps; the interpreter uses 16-wide tiles so
# small test shapes still cross tile and split boundaries.
_CPU_SPLITS = 3  # interpreter: split N three ways whenever it has ≥ 3 chunks (tests exercise the reduction)


def config(dtype: torch.dtype, device: torch.device) -> dict:
    """Tile sizes: gram (BLOCK_I/J/K), product (BLOCK_M/N/K) and row kernels (BLOCK_R/J), and launch options
    for the GEMM-like kernels (``warps``) and the row kernels (``row_warps``)."""
    if not gpu_tiles(device):
        return dict(gram=(16, 16, 16), gemm=(16, 32, 16), gemm_backward=(16, 32, 16), rows=(16, 16), warps={},
                    row_warps={})
    wide = dtype != torch.float32
    t = 64 if wide else 32
    # sm_90 compiles (tests/triton_aot.py): with 4 warps the 16-bit dual Gram and grad_x spill (272 / 560 bytes);
    # 8 warps fit. The 16-bit grad_x (two dots per K step, dS read both ways) at 64×128×64 spilled 208–472 bytes
    # under Triton 3.6 (the GPU machine's; 251 registers, none under 3.9): its K step is 16 (196 registers
    # under 3.6, none spilled). The row kernels spill 32 bytes at 8 warps, none at 4.
    return dict(gram=(t, t, t), gemm=(t, 2 * t, t), gemm_backward=(t, 2 * t, 16 if wide else t), rows=(16, 128),
                warps=dict(num_warps=8 if wide else 4, num_stages=2), row_warps=dict(num_warps=4, num_stages=2))


def split_plan(b: int, c: int, n: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int]:
    """(SPLIT, CHUNK): the Gram reduction over N in SPLIT chunks of CHUNK pixels (a multiple of BLOCK_K),
    enough programs for ≈ 2 per SM when the C×C tiles alone are fewer."""
    bi, bj, bk = config(dtype, device)["gram"]
    chunks = triton.cdiv(n, bk)
    if not gpu_tiles(device):
        want = _CPU_SPLITS
    else:
        tiles = triton.cdiv(c, bi) * triton.cdiv(c, bj) * max(b, 1)
        want = triton.cdiv(2 * sm_count(device), tiles)
    per_split = triton.cdiv(chunks, max(1, min(want, chunks)))
    chunk = per_split * bk
    return triton.cdiv(n, chunk), chunk


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"  # TF32 is ignored for 16-bit operands


def _gram(a: torch.Tensor, bmat: torch.Tensor, d: Optional[torch.Tensor], cfg: dict, split: int, chunk: int):
    b, c, n = a.shape
    bi, bj, bk = cfg["gram"]
    ws = torch.empty((b, split, c, c), dtype=torch.float32, device=a.device)
    ws2 = torch.empty_like(ws) if d is not None else ws
    num_j = triton.cdiv(c, bj)
    dd = d if d is not None else a
    wrap_triton(_channel_gram_partial_kernel)[(triton.cdiv(c, bi) * num_j, b, split)](
        a, dd, bmat, ws, ws2, c, c * c, n, chunk, num_j, *a.stride(), *dd.stride(), *bmat.stride(),
        BLOCK_I=bi, BLOCK_J=bj, BLOCK_K=bk, DUAL=d is not None, PREC=_prec(a), **cfg["warps"],
    )
    return ws, ws2


def gram_forward(x: torch.Tensor, sign: float, gamma: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Writes softmax(s·X Xᵀ) X (γ given: γ·that + x) into ``out``; returns lse (B, C) fp32."""
    b, c, n = x.shape
    lse = torch.empty((b, c), dtype=torch.float32, device=x.device)
    if b == 0:
        return lse
    cfg = config(x.dtype, x.device)
    split, chunk = split_plan(b, c, n, x.dtype, x.device)
    ws, _ = _gram(x, x, None, cfg, split, chunk)
    p = torch.empty((b, c, c), dtype=torch.float32, device=x.device)
    br, bjr = cfg["rows"]
    wrap_triton(_channel_gram_softmax_kernel)[(triton.cdiv(c, br), b)](
        ws, p, lse, c, c * c, split, float(sign) * LOG2E, BLOCK_R=br, BLOCK_J=bjr, **cfg["row_warps"])
    bm, bn, bk = cfg["gemm"]
    wrap_triton(_channel_gram_apply_kernel)[(triton.cdiv(c, bm) * triton.cdiv(n, bn), b)](
        p, x, out, gamma if gamma is not None else p, c, c * c, n, *x.stride(), *out.stride(),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, HAS_GAMMA=gamma is not None, PREC=_prec(x), **cfg["warps"],
    )
    return lse


def gram_backward(grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor], x: torch.Tensor, lse: torch.Tensor,
                  gamma: Optional[torch.Tensor], sign: float, dx: torch.Tensor) -> torch.Tensor:
    """Writes dx into ``dx``; returns r (B, C) fp32 with dγ = r.sum() (r_i = Σ_n dY_in·(P X)_in)."""
    b, c, n = x.shape
    r = torch.zeros((b, c), dtype=torch.float32, device=x.device)
    if b == 0:
        return r
    cfg = config(x.dtype, x.device)
    split, chunk = split_plan(b, c, n, x.dtype, x.device)
    ws_e, ws_d = _gram(x, x, grad_out, cfg, split, chunk)
    pg = torch.empty((b, c, c), dtype=torch.float32, device=x.device)
    ds = torch.empty_like(pg)
    lse = lse.contiguous()
    dlse = grad_lse.contiguous() if grad_lse is not None else lse
    br, bjr = cfg["rows"]
    wrap_triton(_channel_gram_backward_scores_kernel)[(triton.cdiv(c, br), b)](
        ws_e, ws_d, lse, dlse, gamma if gamma is not None else lse, pg, ds, r, c, c * c, split,
        float(sign) * LOG2E, BLOCK_R=br, BLOCK_J=bjr, HAS_DLSE=grad_lse is not None, HAS_GAMMA=gamma is not None,
        **cfg["row_warps"],
    )
    bm, bn, bk = cfg["gemm_backward"]
    wrap_triton(_channel_gram_backward_x_kernel)[(triton.cdiv(c, bm) * triton.cdiv(n, bn), b)](
        pg, ds, x, grad_out, dx, c, c * c, n, float(sign), *x.stride(), *grad_out.stride(), *dx.stride(),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, HAS_GAMMA=gamma is not None, PREC=_prec(x), **cfg["warps"],
    )
    return r
