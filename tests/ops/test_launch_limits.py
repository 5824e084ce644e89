"""Triton launches stay inside CUDA's limits at shapes far beyond the other tests', checked without running.

CUDA grids allow 2³¹−1 programs on axis 0 but only 65,535 on axes 1 and 2; a launch beyond that fails
on the GPU ("invalid argument") and nowhere else. The launchers are called on ``meta`` tensors (nothing
is allocated, the GPU tile configurations are taken) with ``wrap_triton`` replaced by the recorder of
tests/triton_aot.py, and every recorded grid is checked. Where a count cannot move to axis 0 (the batch),
the op's Triton backend must decline the call, so the reference serves it.
"""
import pytest
import torch

from covseg_fast.ops.triton import import_error

if import_error is not None:
    pytest.skip(f"Triton unavailable: {import_error}", allow_module_level=True)

import triton_aot  # noqa: E402

MAX_AXIS0, MAX_AXIS12 = 2**31 - 1, 65535


def recorded(fn) -> list:
    sink: list = []
    with triton_aot.recording("limits", sink):
        fn()
    return sink


def assert_grids_fit(launches) -> None:
    assert launches, "nothing was launched"
    for launch in launches:
        grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))
        assert grid[0] <= MAX_AXIS0 and grid[1] <= MAX_AXIS12 and grid[2] <= MAX_AXIS12, (
            f"{launch.name}: grid {launch.grid} exceeds CUDA's limits (axis 0 ≤ 2³¹−1, axes 1, 2 ≤ 65535)")


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(shape, dtype=dtype, device="meta")


def test_cbam_grids_at_more_than_4_194_240_pixels():
    from covseg_fast.ops.triton import cbam as k

    x = meta(2, 4, 2049, 2049)  # H·W = 4,198,401 pixels: cdiv(H·W, 64) = 65,601 pixel blocks
    b, c, h, w = x.shape
    ca, sa = meta(b, c), meta(b, 1, h, w)

    def run():
        mean, mx, cnt = k.channel_stats(x)
        pooled, pcnt = k.spatial_pool(x, ca)
        k.apply(x, ca, sa)
        k.channel_stats_backward(mean, mx, x, mx, cnt)
        k.spatial_pool_backward(pooled, x, ca, pooled, pcnt)
        k.apply_backward(x, x, ca, sa)
        k.apply_backward_reduce(x, x, ca, sa)
        k.spatial_pool_backward_reduce(pooled, x, ca, pooled, pcnt)
        k.block_backward_x(x, x, ca, sa, pooled, pooled, pcnt, mean, mx, mx, cnt)

    assert_grids_fit(recorded(run))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_channel_attention_gram_grids_at_9_million_pixels(dtype):
    from covseg_fast.ops.triton.attention_gram_launch import gram_backward, gram_forward

    x = meta(1, 8, 9_000_000, dtype=dtype)  # cdiv(N, 128) = 70,313 column blocks of the product kernels
    gamma = meta(1, dtype=torch.float32)

    def run():
        lse = gram_forward(x, 1.0, gamma, torch.empty_like(x))
        gram_backward(torch.empty_like(x), None, x, lse, gamma, 1.0, torch.empty_like(x))

    assert_grids_fit(recorded(run))


def test_flash_attention_grids_with_a_9_million_wide_head():
    """Channel attention's flash path runs the attention kernels with head dim N (pixels): its value and
    qk tiles (BLOCK_C, BLOCK_D ≤ 128) number N / 64 or more."""
    from covseg_fast.ops.triton.attention_launch import attention_backward, attention_forward

    x = meta(1, 8, 9_000_000)
    xt = x.transpose(1, 2)

    def run():
        out = torch.empty_like(x)
        attention_forward(xt, xt, xt, -1.0, out=out.transpose(1, 2))
        attention_backward(out.transpose(1, 2), None, xt, xt, xt, out.transpose(1, 2),
                           meta(1, 8, dtype=torch.float32), -1.0)

    assert_grids_fit(recorded(run))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_split_strip_conv_grids_with_a_batch_of_70_000(channels_last):
    from covseg_fast.ops.triton import strip_conv as k

    b, c = 70_000, 4
    x = meta(b, c, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w0, b0 = meta(c, 1, 5, 5), meta(c)
    wh = [meta(c, 1, 1, s) for s in (7, 11, 21)]
    wv = [meta(c, 1, s, 1) for s in (7, 11, 21)]
    bs = [meta(c) for _ in range(3)]

    def run():
        k.split_forward(x, w0, b0, wh, bs, wv, bs, torch.empty_like(x))
        k.split_backward(torch.empty_like(x), x, w0, b0, wh, bs, wv, bs)
        k.strip_conv_forward(x, w0, b0, wh, bs, wv, bs, torch.empty_like(x), schedule="single")

    assert_grids_fit(recorded(run))


@pytest.mark.parametrize("op", ["cbam_apply", "channel_attention", "position_attention"])
def test_a_batch_beyond_the_grid_is_served_by_the_reference(op):
    """Kernels with the batch on grid axis 1 decline B > 65,535 (the reference serves: no launch fails)."""
    from covseg_fast.ops import REGISTRY

    b = MAX_AXIS12 + 1
    if op == "cbam_apply":
        args = (meta(b, 2, 4, 4),)
    elif op == "channel_attention":
        args = (meta(b, 4, 9), "pfnet", None)
    else:
        args = (meta(b, 2, 9), meta(b, 2, 9), meta(b, 3, 9), 1.0)
    triton_backend = next(be for be in REGISTRY[op].backends if be.name == "triton")
    reason = triton_backend.accepts(*args)
    assert reason is not None and "65535" in reason, reason
