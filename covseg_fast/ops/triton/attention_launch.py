"""Launchers for the attention kernels in ``attention.py`` (called inside ``torch.library.triton_op`` bodies).

Shapes are in attention coordinates: q, k (B, Dqk, N), v (B, Dv, N), out (B, Dv, N), lse (B, N) fp32.
Every tensor may be a strided view (channel attention passes ``x.transpose(1, 2)``); outputs can be
supplied as views too, so channel attention writes straight into its (B, C, N) result.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from torch.library import wrap_triton

from .attention import (LOG2E, _attention_backward_dk_kernel, _attention_backward_dq_kernel,
                        _attention_backward_dv_kernel, _attention_forward_kernel)
from .device import gpu_tiles

# Tile sizes. Not autotuned (no GPU was available while writing them); chosen from an offline compile for
# sm_90 (triton.compile + cuobjdump --dump-resource-usage) as the largest tiles without register spills:
#   16-bit: 64×64 score tiles, 8 warps; forward qk/value tiles ≤ 128, backward ≤ 64 (the dq/dk kernels
#           hold s, p, dp, ds and the accumulator at once and spill with 128-wide tiles);
#   fp32 (IEEE dots): 32×32 score tiles, 8 warps, value tiles ≤ 64, qk tiles ≤ 64 forward and ≤ 32 backward
#         (dq spilled 8–16 bytes at 64 with Dqk ≥ 121; tests/test_triton_kernels_compile_sm90.py checks all).
# The interpreter uses 32×32 score tiles (fewer numpy ops) and the 16-bit caps, so CPU tests exercise the
# same chunking (qk dim looped, value dim split) as CUDA.


def _np2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


def _config(q: torch.Tensor, dqk: int, dv: int, backward: bool) -> dict:
    cuda = gpu_tiles(q.device)  # CUDA, meta tensors asking for the GPU configuration, or force_gpu_tiles()
    wide = q.dtype != torch.float32 or not cuda
    block = 64 if (cuda and wide) else 32
    cap = 128 if (wide and not backward) else 64
    return dict(
        BLOCK_M=block,
        BLOCK_N=block,
        BLOCK_D=min(_np2(dqk), 32 if (backward and not wide) else cap),
        BLOCK_C=min(_np2(dv), cap),
        PREC="ieee" if q.dtype == torch.float32 else "tf32",  # TF32 is the default and ignored for 16-bit operands
    )


def _launch_opts(q: torch.Tensor) -> dict:
    return dict(num_warps=8, num_stages=2) if gpu_tiles(q.device) else {}


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      out: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                      gamma: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out (B, Dv, N) in v.dtype (written into ``out`` when given), lse (B, N) fp32 natural log.
    With ``residual`` (shaped like out) and a 1-element ``gamma``: out = γ·attention + residual."""
    b, dqk, n = q.shape
    dv = v.shape[1]
    if out is None:
        out = torch.empty((b, dv, n), dtype=v.dtype, device=v.device)
    lse = torch.empty((b, n), dtype=torch.float32, device=q.device)
    cfg = _config(q, dqk, dv, backward=False)
    num_d = triton.cdiv(dqk, cfg["BLOCK_D"])
    grid = (triton.cdiv(n, cfg["BLOCK_M"]) * triton.cdiv(dv, cfg["BLOCK_C"]), b)
    has_res = residual is not None
    wrap_triton(_attention_forward_kernel)[grid](
        q, k, v, out, lse, residual if has_res else out, gamma if has_res else lse, n, dqk, dv, float(scale) * LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *(residual if has_res else out).stride(),
        NUM_D=num_d, HAS_RES=has_res, **cfg, **_launch_opts(q),
    )
    return out, lse


def attention_backward(
    grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, scale: float,
    dq: Optional[torch.Tensor] = None, dk: Optional[torch.Tensor] = None, dv: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) shaped like q, k, v (written into the given buffers when supplied)."""
    b, dqk, n = q.shape
    dvd = v.shape[1]
    # Preprocessing: delta_i = Σ_c dO[c, i]·O[c, i] − dlse_i  (O(N·C) work, (B, N) fp32).
    delta = (grad_out.float() * out.float()).sum(1)
    if grad_lse is not None:
        delta = delta - grad_lse.float()
    delta = delta.contiguous()
    lse = lse.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format) if dq is None else dq
    dk = torch.empty_like(k, memory_format=torch.contiguous_format) if dk is None else dk
    dv = torch.empty_like(v, memory_format=torch.contiguous_format) if dv is None else dv
    cfg = _config(q, dqk, dvd, backward=True)
    num_d = triton.cdiv(dqk, cfg["BLOCK_D"])
    num_c = triton.cdiv(dvd, cfg["BLOCK_C"])
    opts = _launch_opts(q)
    s_log2e = float(scale) * LOG2E
    common = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    wrap_triton(_attention_backward_dq_kernel)[(triton.cdiv(n, cfg["BLOCK_M"]) * num_d, b)](
        q, k, v, grad_out, lse, delta, dq, n, dqk, dvd, float(scale), s_log2e, *common, *dq.stride(),
        NUM_D=num_d, NUM_C=num_c, **cfg, **opts,
    )
    wrap_triton(_attention_backward_dk_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]) * num_d, b)](
        q, k, v, grad_out, lse, delta, dk, n, dqk, dvd, float(scale), s_log2e, *common, *dk.stride(),
        NUM_D=num_d, NUM_C=num_c, **cfg, **opts,
    )
    wrap_triton(_attention_backward_dv_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]) * num_c, b)](
        q, k, grad_out, lse, dv, n, dqk, dvd, s_log2e,
        *q.stride(), *k.stride(), *grad_out.stride(), *dv.stride(),
        NUM_D=num_d, **cfg, **opts,
    )
    return dq, dk, dv
