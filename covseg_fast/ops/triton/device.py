"""What the launchers know about the GPU they launch on: SM count, peak rates, and which tile set to use.

- ``sm_count(device)``: from ``torch.cuda.get_device_properties`` on CUDA; 132 (an H100/H200) for ``meta``
  tensors (the ahead-of-time compile of tests/triton_aot.py) and for CPU tensors under the interpreter,
  so the CPU tests take the grids an H100 would.
- ``peak_rates(device)``: HBM bandwidth and dense tensor-core / FP32 FLOP rates for the roofline estimates
  of ``attention_cost.py``, from a table keyed by the device name (first matching entry wins); an unknown
  GPU gets the conservative ``DEFAULT_RATES``. CPU and meta tensors get the H100 row, the machine the
  estimates in the docs were worked out for.
- ``gpu_tiles(device)``: whether a launcher takes its GPU tile configuration (CUDA and meta tensors), or the
  interpreter's (CPU tensors). :func:`force_gpu_tiles` makes CPU tensors take the GPU configuration, so the
  interpreter tests run the tile sizes, chunks and persistent grids the GPU runs (on small shapes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Iterator, Optional

import torch

AOT_SM_COUNT = 132  # H100 SXM / H200: what meta tensors (ahead-of-time compiles) and the interpreter stand for


@dataclasses.dataclass(frozen=True)
class PeakRates:
    """Roofline anchors of one GPU: bytes/s of HBM (read + write), dense 16-bit tensor-core and FP32 FLOP/s."""

    name: str
    hbm_bytes_per_s: float
    flops_16bit: float
    flops_fp32: float


# Substring of the CUDA device name → rates. Measured where the row says so (KERNELS.md §0, GPU_CHECK.md),
# else the vendor's dense (not sparse) figures. More specific names come first ("H100 PCIe" before "H100").
RATE_TABLE: tuple[PeakRates, ...] = (
    PeakRates("GH200", 4.0e12, 800e12, 67e12),      # spec (HBM3e variant); before "H200", which it contains
    PeakRates("H200", 4.3e12, 780e12, 67e12),       # measured: device-to-device copy, 8192³ bf16 GEMM
    PeakRates("H100 PCIe", 2.0e12, 756e12, 51e12),  # spec
    PeakRates("H100 NVL", 3.9e12, 835e12, 60e12),   # spec
    PeakRates("H100", 3.0e12, 800e12, 67e12),       # SXM: measured copy and GEMM; FP32 spec
    PeakRates("A100", 1.6e12, 312e12, 19.5e12),     # spec, 40 GB (80 GB: 2.0 TB/s)
    PeakRates("L40S", 0.86e12, 362e12, 91.6e12),    # spec
    PeakRates("L40", 0.86e12, 181e12, 90.5e12),     # spec
    PeakRates("L4", 0.3e12, 121e12, 30e12),         # spec
    PeakRates("A10", 0.6e12, 125e12, 31e12),        # spec (A10 / A10G)
    PeakRates("RTX 4090", 1.0e12, 165e12, 82e12),   # spec
)
# An unknown GPU: low bandwidth and low FLOP rates, in the ratio of a mid-range card.
DEFAULT_RATES = PeakRates("unknown GPU (conservative default)", 0.5e12, 100e12, 20e12)
REFERENCE_RATES = next(r for r in RATE_TABLE if r.name == "H100")

_forced: Optional[dict] = None  # set by force_gpu_tiles()


def rates_for_name(device_name: str) -> PeakRates:
    """The first table row whose name is part of ``device_name`` (e.g. "NVIDIA H100 80GB HBM3"), else the default."""
    for rates in RATE_TABLE:
        if rates.name.lower() in device_name.lower():
            return rates
    return DEFAULT_RATES


@functools.lru_cache(maxsize=None)
def _cuda_properties(index: int):
    return torch.cuda.get_device_properties(index)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (see the module docstring for meta and CPU tensors)."""
    if _forced is not None and _forced.get("sm_count") is not None and device.type == "cpu":
        return _forced["sm_count"]
    if device.type == "cuda":
        return _cuda_properties(_index(device)).multi_processor_count
    return AOT_SM_COUNT


def peak_rates(device: torch.device) -> PeakRates:
    """Roofline rates of ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return rates_for_name(_cuda_properties(_index(device)).name)
    return REFERENCE_RATES


def gpu_tiles(device: torch.device) -> bool:
    """True when a launcher should take its GPU tile configuration for tensors on ``device``."""
    return device.type != "cpu" or _forced is not None


@contextlib.contextmanager
def force_gpu_tiles(sm_count: Optional[int] = None) -> Iterator[None]:
    """Inside: CPU tensors (the interpreter) take the GPU tile configurations; ``sm_count`` sets the SM count
    the persistent grids and occupancy heuristics see (default 132), so small test shapes can reach the
    configurations large shapes get on a real GPU."""
    global _forced
    saved = _forced
    _forced = {"sm_count": sm_count}
    try:
        yield
    finally:
        _forced = saved


# ---- addressing limits every launcher respects
MAX_GRID_AXIS0 = 2**31 - 1  # programs on grid axis 0
MAX_GRID_AXIS12 = 65535  # programs on grid axes 1 and 2: large counts go on axis 0, a batch above this to the reference
INT32_MAX = 2**31 - 1


def max_offset(t: torch.Tensor) -> int:
    """The largest element offset of ``t`` from its first element: Σ (size − 1)·|stride| (0 when empty)."""
    if t.numel() == 0:
        return 0
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True when an index · stride product inside a kernel could pass 2³¹ − 1 for one of ``tensors`` (its
    largest offset or its element count does): the kernel must then address it with int64 arithmetic."""
    return any(max_offset(t) > INT32_MAX or t.numel() > INT32_MAX for t in tensors)


def batch_over_grid(batch: int) -> Optional[str]:
    """Why a kernel with the batch on grid axis 1 cannot take ``batch`` images, or None."""
    if batch > MAX_GRID_AXIS12:
        return f"batch {batch} > {MAX_GRID_AXIS12}, the CUDA grid's axis-1 limit (the reference serves it)"
    return None
