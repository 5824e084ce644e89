"""FLOP and HBM-byte estimates of the attention ops, and the rule that picks channel attention's path.

Roofline anchors: the device's HBM bandwidth (read + write), 16-bit tensor-core and FP32 rates (our fp32 dots
are IEEE, not TF32, so they run on the FP32 cores), from ``device.peak_rates``: a table keyed by the CUDA
device's name, a conservative default for unknown GPUs, the H100 row (KERNELS.md §0: 3.0 TB/s, ≈ 800 and
≈ 67 TFLOP/s) for CPU and meta tensors. An estimate's time is max(bytes / bandwidth, FLOPs / peak):
arithmetic, not a measurement.

Channel attention, x (B, C, N), E = bytes of x, Q = 4·B·C² (one fp32 C×C matrix per image):

- ``gram`` (ops/triton/attention_gram.py): forward 4·B·C²·N FLOPs (Gram + product) and
  3E + Q·(3·SPLIT + 2) bytes (read x for the Gram and for the product, write out; partials written
  once and read twice, P written and read once). Backward 8·B·C²·N FLOPs (E recomputed with dY Xᵀ
  in one sweep, then two GEMMs) and 5E + Q·(6·SPLIT + 5) bytes. The γ·out + x epilogue adds no HBM
  traffic: its x tile is inside the block of x the product has just read.
- ``flash`` (the position-attention kernels on transposed views, head dim = N): each value tile of
  BLOCK_C pixels recomputes the whole C×C score matrix, so the forward runs 2·B·C²·N·(⌈N/BLOCK_C⌉ + 1)
  FLOPs and the backward B·C²·N·(8·⌈N/BLOCK_D⌉ + 2·⌈N/BLOCK_C⌉ + 6) (dq/dk recompute scores and
  dp per qk tile, dv the scores per value tile), plus the forward again with γ (the attention output
  is recomputed, not saved). Bytes: 2E forward, 11E backward (+7E with γ). Nothing C×C is stored.

Rule (``channel_attention_path``): the path with the smaller estimated forward + backward time at the
call's shape, dtype and device, or ``COVSEG_CHANNEL_ATTENTION_PATH=gram|flash`` to force one (read through
``ops/knobs.py``). Worked examples (B = 16, fwd+bwd estimates on an H100):

| C, N | where | bf16 gram / flash | fp32 gram / flash |
|---|---|---|---|
| 64, 16384 | Ref-Net APM at f2 of a 512² input | **0.10** / 3.8 ms (flash: 64× the forward FLOPs) | **0.20** / 82 ms |
| 256, 484 | APM at f4 of a 352² input | **0.046** / 0.061 ms | **0.091** / 1.3 ms |
| 512, 121 | APM at f5 of a 352² input | 0.095 / **0.019** ms | **0.10** / 0.36 ms |
| 2048, 121 | ``refnet_f5`` benchmark shape | 1.45 / **0.31** ms | **1.50** / 5.8 ms |

Flash wins only where one value tile covers N (N ≤ BLOCK_C: no recomputation) and the C×C traffic of the
gram path (≥ 16 passes of 4·B·C² bytes) outweighs fast 16-bit dots; fp32's IEEE dots are 12× slower, so
in fp32 the gram path wins everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import knobs
from .device import REFERENCE_RATES, PeakRates, peak_rates

PATHS = ("gram", "flash")
PATH_ENV = "COVSEG_CHANNEL_ATTENTION_PATH"
_META = torch.device("meta")


@dataclass(frozen=True)
class Cost:
    """Estimated FLOPs and HBM bytes of one call, forward and backward."""

    fwd_flops: float
    bwd_flops: float
    fwd_bytes: float
    bwd_bytes: float

    def seconds(self, dtype: torch.dtype, backward: bool = True, rates: PeakRates = REFERENCE_RATES) -> float:
        peak = rates.flops_fp32 if dtype == torch.float32 else rates.flops_16bit
        t = max(self.fwd_bytes / rates.hbm_bytes_per_s, self.fwd_flops / peak)
        if backward:
            t += max(self.bwd_bytes / rates.hbm_bytes_per_s, self.bwd_flops / peak)
        return t


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _gpu(device: Optional[torch.device]) -> torch.device:
    """The device whose GPU configuration the estimate uses: a CUDA device itself, else meta (an H100)."""
    return device if device is not None and device.type == "cuda" else _META


def channel_gram_cost(b: int, c: int, n: int, dtype: torch.dtype, split: int | None = None,
                      device: Optional[torch.device] = None) -> Cost:
    """The gram path; ``split`` defaults to the launcher's plan on ``device`` (a CUDA device; else an H100)."""
    if split is None:
        from .attention_gram_launch import split_plan

        split = split_plan(b, c, n, dtype, _gpu(device))[0]
    e, q, k = b * c * n * _elem(dtype), 4.0 * b * c * c, float(b) * c * c * n
    return Cost(4 * k, 8 * k, 3 * e + q * (3 * split + 2), 5 * e + q * (6 * split + 5))


def channel_flash_cost(b: int, c: int, n: int, dtype: torch.dtype, gamma: bool = False) -> Cost:
    """The flash path with the CUDA tile sizes of ``attention_launch._config``."""
    from .attention_launch import _config

    meta = torch.empty(0, dtype=dtype, device="meta")
    fwd, bwd = _config(meta, n, n, backward=False), _config(meta, n, n, backward=True)
    nf = math.ceil(n / fwd["BLOCK_C"])
    nd, nc = math.ceil(n / bwd["BLOCK_D"]), math.ceil(n / bwd["BLOCK_C"])
    e, k = b * c * n * _elem(dtype), float(b) * c * c * n
    fwd_flops = 2 * k * (nf + 1)
    bwd_flops = k * (8 * nd + 2 * nc + 6) + (fwd_flops if gamma else 0.0)
    return Cost(fwd_flops, bwd_flops, 2 * e, (18 if gamma else 11) * e)


def channel_attention_path(b: int, c: int, n: int, dtype: torch.dtype, gamma: bool = False,
                           device: Optional[torch.device] = None) -> str:
    """``gram`` or ``flash``: ``COVSEG_CHANNEL_ATTENTION_PATH`` if set, else the cheaper estimate on ``device``
    (its peak rates and SM count; CPU, meta or None: an H100)."""
    forced = (knobs.value(PATH_ENV) or "").strip().lower()
    if forced and forced != "auto":
        if forced not in PATHS:
            raise ValueError(f"{PATH_ENV}={forced!r}: expected auto, gram or flash")
        return forced
    b = max(b, 1)
    gpu = _gpu(device)
    rates = peak_rates(gpu)
    gram = channel_gram_cost(b, c, n, dtype, device=gpu).seconds(dtype, rates=rates)
    flash = channel_flash_cost(b, c, n, dtype, gamma).seconds(dtype, rates=rates)
    return "gram" if gram <= flash else "flash"


def channel_useful_flops(b: int, c: int, n: int, backward: bool = False) -> float:
    """FLOPs the math needs: 4·B·C²·N forward (Gram + product), + 6·B·C²·N backward (dP, Pᵀ dO, dS X)."""
    return float(b) * c * c * n * (10 if backward else 4)


def position_flops(b: int, cq: int, c: int, n: int, backward: bool = False) -> float:
    """Forward 2·B·N²·(Cq + C) (the issue's count); fwd+bwd 3.5× (backward ≈ 2.5× forward, the
    convention of Triton's fused-attention tutorial; our backward recomputes more than that)."""
    fwd = 2.0 * b * n * n * (cq + c)
    return fwd * 3.5 if backward else fwd


def position_bytes(b: int, cq: int, c: int, n: int, dtype: torch.dtype, backward: bool = False) -> float:
    """Compulsory HBM bytes: forward reads q, k, v and writes out and lse; the backward reads q, k, v, out,
    dO and lse and writes dq, dk, dv (delta (B, N) fp32 written and read)."""
    es = _elem(dtype)
    fwd = es * b * n * (2 * cq + 2 * c) + 4 * b * n
    bwd = es * b * n * (2 * cq + 3 * c) + es * b * n * (2 * cq + c) + 12 * b * n
    return fwd + bwd if backward else fwd


def position_eager_peak_bytes(b: int, n: int, backward: bool = False) -> float:
    """Estimated peak of the eager reference: fp32 N×N tensors alive at once, 2 forward (energy and
    probabilities), 3 with backward (saved probabilities, their gradient and the energy's)."""
    return (3 if backward else 2) * 4.0 * b * n * n
