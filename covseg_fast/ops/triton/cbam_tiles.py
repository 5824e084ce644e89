"""Layout and tile choices shared by the CBAM launchers (cbam.py: forward, cbam_backward.py: backward).

Full-size tensors are read in place as (B, C, HW) when NCHW- or channels_last-dense; tiles are
[BLOCK_C, BLOCK_HW]: ``_blocks`` for grids over (B, pixel blocks, channel blocks), ``_pixel_blocks``
for programs that own a pixel block and loop over all C.
"""
from __future__ import annotations

import torch
import triton

from .device import AOT_SM_COUNT, sm_count


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself if NCHW- or channels_last-contiguous, else an NCHW-contiguous copy."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(stride_b, stride_c, stride_hw) of a dense (B, C, H, W) tensor read as (B, C, HW)."""
    return t.stride(0), t.stride(1), (t.stride(3) if t.size(3) > 1 else t.stride(2))


def _blocks(c: int, hw: int) -> tuple[int, int]:
    return min(32, triton.next_power_of_2(c)), min(64, triton.next_power_of_2(hw))


_PROGRAMS_PER_SM = 4  # the stats pass fills the GPU with ≈ 4 programs per SM


def stats_splits(b: int, c: int, hw: int, sms: int = AOT_SM_COUNT) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_HW, splits, HW per split) of the channel-stats pass on a GPU with ``sms`` SMs.

    HW is split over programs only while B·cdiv(C, BLOCK_C) programs cannot fill the GPU; with one split the
    kernel writes the final mean/max/count and nothing is merged afterwards (one launch instead of seven).
    """
    bc, bhw = _blocks(c, hw)
    target = _PROGRAMS_PER_SM * sms
    splits = max(1, min(triton.cdiv(target, max(1, b * triton.cdiv(c, bc))), triton.cdiv(hw, bhw)))
    per_split = triton.cdiv(triton.cdiv(hw, splits), bhw) * bhw
    return bc, bhw, triton.cdiv(hw, per_split), per_split


def _pixel_blocks(b: int, c: int, hw: int, sms: int = AOT_SM_COUNT) -> tuple[int, int]:
    """Tiles for the kernels whose programs own a pixel block and loop over C (grid (cdiv(HW, BLOCK_HW), B)).

    Small maps (refnet_f5: 16×2048×11²) would give too few programs to fill the GPU (``sms`` SMs), so
    BLOCK_HW shrinks (down to 16) until there are ≥ 2 programs per SM, and BLOCK_C grows to keep a
    ~2048-element tile.
    """
    bhw = min(64, triton.next_power_of_2(hw))
    while bhw > 16 and b * triton.cdiv(hw, bhw) < 2 * sms:
        bhw //= 2
    return min(triton.next_power_of_2(c), 2048 // bhw), bhw


class Tiling:
    """Shape and tiles of one CBAM launch over a dense (B, C, H, W) tensor (ints: grids specialise on them).

    ``per_pixel=False``: [BLOCK_C, BLOCK_HW] tiles over the grid ``grid3`` = (pixel blocks, B, channel
    blocks); ``per_pixel=True``: programs own a pixel block and loop over C, grid ``grid2`` = (nb, B).
    The pixel blocks are on axis 0 (up to 2³¹−1 programs): axes 1 and 2 stop at 65,535, which
    cdiv(H·W, 64) passes above 4,194,240 pixels; a batch above 65,535 goes to the reference (ops/cbam.py).
    """

    def __init__(self, x: torch.Tensor, per_pixel: bool = False) -> None:
        self.b, self.c, self.h, self.w = (int(s) for s in x.shape)
        self.hw = self.h * self.w
        sms = sm_count(x.device)
        self.bc, self.bhw = _pixel_blocks(self.b, self.c, self.hw, sms) if per_pixel else _blocks(self.c, self.hw)
        self.nb = triton.cdiv(self.hw, self.bhw)
        self.grid2 = (self.nb, self.b)
        self.grid3 = (self.nb, self.b, triton.cdiv(self.c, self.bc))
