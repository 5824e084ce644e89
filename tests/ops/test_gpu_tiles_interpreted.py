"""The GPU tile configurations, run by the interpreter on small shapes (``force_gpu_tiles``).

The other interpreter tests run the CPU configurations (few large programs: the interpreter's cost is per
program and per op), so the GPU's tile sizes, chunks, channel blocks, persistent grids and HW/N splits
would first run on a GPU. Here CPU tensors take exactly the configuration a CUDA tensor of the same shape
gets (each test checks that against the ``meta``-tensor configuration), with a small SM count where the
GPU heuristics depend on it, on shapes that cross every tile boundary at least once.
fp32 tolerances as in the ops' own tests; fp16 within 2× the reference's own fp16 error.
"""
import pytest
import torch

from covseg_fast.ops import cbam_apply, cbam_channel_stats, cbam_spatial_pool, channel_attention, position_attention
from covseg_fast.ops.reference import cbam as cbam_ref
from covseg_fast.ops.reference.attention import channel_attention as channel_reference
from covseg_fast.ops.reference.attention import position_attention as position_reference
from covseg_fast.ops.reference.strip_conv import strip_conv as strip_reference
from covseg_fast.ops.strip_conv import _reference_backward as strip_reference_backward
from covseg_fast.ops.triton import available
from op_harness import assert_low_precision_bound, assert_same, generator, grads_of, run_backend

REASON = available("cpu")
pytestmark = [pytest.mark.triton, pytest.mark.skipif(REASON is not None, reason=f"Triton on CPU: {REASON}")]

if REASON is None:
    from covseg_fast.ops.triton import strip_conv as strip_kernels
    from covseg_fast.ops.triton.attention_gram_launch import config as gram_config
    from covseg_fast.ops.triton.attention_gram_launch import split_plan
    from covseg_fast.ops.triton.attention_launch import _config as attention_config
    from covseg_fast.ops.triton.cbam_tiles import Tiling, stats_splits
    from covseg_fast.ops.triton.device import force_gpu_tiles
    from covseg_fast.ops.triton.strip_conv_single import single_pass_config
    from covseg_fast.ops.triton.strip_conv_single_backward import single_pass_backward_config
    from covseg_fast.ops.triton.strip_conv_split import _blocks as split_blocks


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


# ---------------------------------------------------------------------------------------------- strip conv
def _strip_inputs(b, c, h, w, channels_last, seed):
    gen = generator(seed)
    rnd = lambda *s, scale=1.0: torch.randn(s, generator=gen, dtype=torch.float64).float() * scale  # noqa: E731
    x = rnd(b, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ks = (7, 11, 21)
    return (x, rnd(c, 1, 5, 5, scale=0.3), rnd(c, scale=0.1), [rnd(c, 1, 1, k, scale=0.4) for k in ks],
            [rnd(c, scale=0.1) for _ in ks], [rnd(c, 1, k, 1, scale=0.4) for k in ks], [rnd(c, scale=0.1) for _ in ks])


# (forward shape, backward shape) per layout, each the smallest that has 2 tile rows (one partial), a partial
# channel block (channels_last) and more tiles than persistent programs (1 SM: 3 NCHW / 2 channels_last):
# NCHW forward 64×64 tiles of 1 channel in 512-element chunks, backward 32×32 in 128-element chunks over two
# sweeps; channels_last forward 8 channels × 32×32 in 64-pixel chunks, backward 4 × 16×16 in 32-pixel chunks.
# The split schedule (1×8×32 NCHW, 16×2×8 channels_last tiles) runs on the backward shapes.
STRIP_SHAPES = {"nchw": ((1, 2, 65, 64), (1, 2, 33, 32), False), "channels_last": ((1, 9, 33, 32), (1, 5, 17, 16), True)}


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["single", "split"])
@pytest.mark.parametrize("layout", list(STRIP_SHAPES))
def test_strip_conv_gpu_tiles_fp32(monkeypatch, schedule, layout):
    monkeypatch.setenv("COVSEG_STRIP_CONV_SCHEDULE", schedule)
    fwd_shape, bwd_shape, channels_last = STRIP_SHAPES[layout]
    x, *weights = _strip_inputs(*(fwd_shape if schedule == "single" else bwd_shape), channels_last, seed=1)
    xb, *wb = _strip_inputs(*bwd_shape, channels_last, seed=2)
    g = torch.randn(xb.shape, generator=generator(1)).contiguous(
        memory_format=torch.contiguous_format if channels_last else torch.channels_last)
    with force_gpu_tiles(sm_count=1):
        assert single_pass_config(x) == single_pass_config(_meta(x))
        assert single_pass_backward_config(xb) == single_pass_backward_config(_meta(xb))
        assert split_blocks(xb) == split_blocks(_meta(xb))
        got = strip_kernels.strip_conv_forward(x, *weights, torch.empty_like(x), schedule=schedule)
        grads = strip_kernels.strip_conv_backward(g, xb, *wb)
    want = strip_reference(x, *weights)
    assert_same(got, want, atol=1e-5 * want.abs().max().item() + 1e-6, rtol=1e-5)
    for i, (a, e) in enumerate(zip(grads, strip_reference_backward(g, xb, *wb))):
        assert_same(a, e, atol=1e-5 * e.abs().max().item() + 1e-6, rtol=1e-5, what=f"gradient {i}")


@pytest.mark.slow
def test_strip_conv_gpu_tiles_fp16_single_pass():
    """The forward's scratch holds a0 and the strips in x's dtype: the rounding the GPU configuration does."""
    args64 = [t.double() if isinstance(t, torch.Tensor) else [u.double() for u in t]
              for t in _strip_inputs(1, 2, 65, 64, False, seed=3)]

    def cast(args, dtype):
        return [t.to(dtype) if isinstance(t, torch.Tensor) else [u.to(dtype) for u in t] for t in args]

    def fused(*args):
        x, *weights = cast(args, torch.float16)
        with force_gpu_tiles(sm_count=1):
            return strip_kernels.strip_conv_forward(x, *weights, torch.empty_like(x), schedule="single")

    def reference(*args):
        return strip_reference(*cast(args, args[0].dtype))

    assert_low_precision_bound(fused, reference, args64, torch.float16, floor=1e-3)


# ---------------------------------------------------------------------------------------------- attention
def _fwd_bwd(fn, gpu_tiles, sm_count=None):
    """inputs → [output, gradient of Σ out·g for each input], fn run on the Triton backend with GPU tiles."""
    def run(*inputs):
        leaves = [t.detach().requires_grad_() for t in inputs]
        if not gpu_tiles:
            return [fn(*leaves), *grads_of(fn, leaves, seed=2)]
        with force_gpu_tiles(sm_count=sm_count):
            out = run_backend("triton", fn, *leaves)
            return [out, *run_backend("triton", grads_of, fn, leaves, seed=2)]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_position_attention_gpu_tiles(dtype):
    """fp32: 32×32 score tiles, qk tiles ≤ 64 forward / 32 backward, value tiles ≤ 64; 16-bit: 64×64 score
    tiles, qk/value tiles ≤ 128 forward, ≤ 64 backward. Cq = 40 and C = 70 cross a qk and a value tile,
    N = 150 three query blocks."""
    gen = generator(7)
    q, k = (torch.randn(1, 40, 150, generator=gen, dtype=torch.float64) * 0.5 for _ in range(2))
    v = torch.randn(1, 70, 150, generator=gen, dtype=torch.float64)
    with force_gpu_tiles():
        for backward in (False, True):
            assert attention_config(q.to(dtype), 40, 70, backward) == attention_config(
                _meta(q.to(dtype)), 40, 70, backward)
    fused = _fwd_bwd(lambda *t: position_attention(*t, 0.3), gpu_tiles=True)
    ref = _fwd_bwd(lambda *t: position_reference(*t, 0.3), gpu_tiles=False)
    if dtype == torch.float32:
        assert_same(fused(q.float(), k.float(), v.float()), ref(q.float(), k.float(), v.float()), atol=2e-5, rtol=1e-4)
    else:
        assert_low_precision_bound(fused, ref, [q, k, v], dtype, floor=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["gram", "flash"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_channel_attention_gpu_tiles(monkeypatch, path, dtype):
    """gram: 32-wide (fp32) or 64-wide (16-bit) Gram and product tiles, N split so that ≈ 2 programs per SM
    run (16 SMs: 4–5 splits here); flash: the attention kernels with head dim N = 300 (value and qk tiles)."""
    monkeypatch.setenv("COVSEG_CHANNEL_ATTENTION_PATH", path)
    b, c, n = 1, 70, 300
    x = torch.rand(b, c, n, generator=generator(5), dtype=torch.float64) * 2 / n ** 0.5
    gamma = torch.tensor([0.7], dtype=torch.float64)
    with force_gpu_tiles(sm_count=16):
        assert gram_config(dtype, x.device) == gram_config(dtype, torch.device("meta"))
        assert split_plan(b, c, n, dtype, x.device)[0] > 1
    fused = _fwd_bwd(lambda x, g: channel_attention(x, "pfnet", g), gpu_tiles=True, sm_count=16)
    ref = _fwd_bwd(lambda x, g: channel_reference(x, "pfnet", g), gpu_tiles=False)
    if dtype == torch.float32:
        assert_same(fused(x.float(), gamma.float()), ref(x.float(), gamma.float()), atol=2e-5, rtol=1e-4)
    else:
        assert_low_precision_bound(fused, ref, [x, gamma], dtype, floor=2e-3)


# ---------------------------------------------------------------------------------------------- CBAM
@pytest.mark.parametrize("sms", [1, 132])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_cbam_gpu_tiles(sms, channels_last):
    """1 SM: the stats pass takes one HW split (the kernel writes the final mean/max/count) and the
    per-pixel kernels keep 64-pixel blocks with 32 channels, two channel blocks per pixel block; 132 SMs:
    HW splits merged in torch and 16-pixel blocks with all 40 channels."""
    gen = generator(11)
    x = torch.randn(2, 40, 9, 15, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ca, sa = torch.rand(2, 40, generator=gen) + 0.1, torch.rand(2, 1, 9, 15, generator=gen)
    with force_gpu_tiles(sm_count=sms):
        splits = stats_splits(2, 40, 135, sms)[2]
        pixel = Tiling(x, per_pixel=True)
        assert (splits == 1, pixel.bhw) == ((True, 64) if sms == 1 else (False, 16))
        inputs = [t.detach().requires_grad_() for t in (x, ca, sa)]

        def fused(x, ca, sa):
            mean, mx = cbam_channel_stats(x)
            return [mean, mx, cbam_spatial_pool(x, ca), cbam_apply(x, ca, sa)]

        got = run_backend("triton", fused, *inputs)
        got_grads = run_backend("triton", grads_of, fused, inputs, seed=3)

    def ref(x, ca, sa):
        mean, mx, _ = cbam_ref.channel_stats(x)
        return [mean, mx, cbam_ref.spatial_pool(x, ca)[0], cbam_ref.apply(x, ca, sa)]

    ref_inputs = [t.detach().requires_grad_() for t in (x, ca, sa)]
    assert_same(got, ref(*ref_inputs), atol=1e-5, rtol=1e-5)
    assert_same(got_grads, grads_of(ref, ref_inputs, seed=3), atol=1e-5, rtol=1e-5, what="grads")
