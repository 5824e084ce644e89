"""The two Triton forward schedules of covseg::strip_conv against the reference.

``single`` (one launch forward and one backward, intermediates in a per-program scratch, persistent
grid) is the default and is covered by test_strip_conv.py; here both schedules are checked directly on shapes that stress the
single-pass tiling: several tiles per program (the interpreter config uses 16×16 tiles and 2
programs), images smaller than the halo, one long strip (P = 15), absent branches, channels_last with
a partial channel block. fp32 tolerance as in test_strip_conv.py; fp16 within 2× the reference's own
fp16 error against float64.
"""
import pytest
import torch

from covseg_fast.ops.triton import available, import_error
from op_harness import HAS_CUDA, assert_low_precision_bound, generator, max_error

if import_error is not None:
    pytest.skip(f"Triton kernels unavailable: {import_error}", allow_module_level=True)

from covseg_fast.ops.reference.strip_conv import strip_conv as reference  # noqa: E402
from covseg_fast.ops.strip_conv import _reference_backward  # noqa: E402
from covseg_fast.ops.triton import strip_conv as kernels  # noqa: E402

CPU_REASON = available("cpu")
DEVICES = [pytest.param("cpu", marks=[pytest.mark.triton] + ([pytest.mark.skip(reason=CPU_REASON)] if CPU_REASON
                                                             else [])),
           pytest.param("cuda", marks=[pytest.mark.triton, pytest.mark.cuda, pytest.mark.skipif(
               not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")])]
# (B, C, H, W, k0, strip sizes, channels_last)
SHAPES = [
    (2, 3, 19, 23, 5, (7, 11, 21), False),   # 2×2 tiles per image, 24 tiles on 2 programs
    (1, 5, 17, 9, 5, (7, 11, 21), True),     # channels_last, channel block of 4 with a partial one
    (1, 2, 3, 2, 3, (31,), False),           # image far smaller than the halo, one branch, P = 15
    (1, 2, 33, 7, 5, (3, 7), False),         # two branches, tall image: 3 tile rows
    (1, 1, 1, 1, 1, (1, 1, 1), False),       # 1×1 kernels everywhere
]


def make(b, c, h, w, k0, ks, channels_last, dtype=torch.float32, device="cpu", seed=0):
    gen = generator(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

    x = rnd(b, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, rnd(c, 1, k0, k0, scale=(2 / k0**2) ** 0.5), rnd(c, scale=0.1),
            [rnd(c, 1, 1, k, scale=(2 / k) ** 0.5) for k in ks], [rnd(c, scale=0.1) for _ in ks],
            [rnd(c, 1, k, 1, scale=(2 / k) ** 0.5) for k in ks], [rnd(c, scale=0.1) for _ in ks])


def run(schedule, x, *weights):
    out = torch.empty_like(x)  # keeps x's layout
    return kernels.strip_conv_forward(x, *weights, out, schedule=schedule)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("schedule", kernels.SCHEDULES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_schedule_matches_reference_fp32(device, schedule, shape):
    args = make(*shape, device=device, seed=sum(shape[:4]))
    got = run(schedule, *args)
    want = reference(*args)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-7)
    assert got.is_contiguous(memory_format=torch.channels_last if shape[-1] else torch.contiguous_format)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("schedule", kernels.SCHEDULES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_schedule_matches_reference_fp32(monkeypatch, device, schedule, shape):
    """gx and every weight/bias gradient; g has the other layout than x, so both are read in place."""
    monkeypatch.setenv("COVSEG_STRIP_CONV_SCHEDULE", schedule)
    x, *weights = make(*shape, device=device, seed=sum(shape[:4]) + 1)
    g = torch.randn(x.shape, generator=generator(3), dtype=torch.float64).to(x)
    g = g.contiguous(memory_format=torch.contiguous_format if shape[-1] else torch.channels_last)
    got = kernels.strip_conv_backward(g, x, *weights)
    want = _reference_backward(g, x, *weights)
    assert len(got) == len(want)
    for i, (a, e) in enumerate(zip(got, want)):
        scale = e.abs().max().item() if e.numel() else 0.0
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * scale + 1e-7, msg=lambda m: f"grad {i}: {m}")
    assert got[0].is_contiguous(memory_format=torch.channels_last if shape[-1] else torch.contiguous_format)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("schedule", kernels.SCHEDULES)
def test_schedule_fp16_error_bound(device, schedule):
    args64 = make(2, 3, 18, 21, 5, (7, 11, 21), False, dtype=torch.float64, device=device, seed=5)

    def fused(x, w0, b0, wh, bh, wv, bv):
        cast = lambda ts: [t.to(x.dtype) for t in ts]  # noqa: E731
        return run(schedule, x, w0.to(x.dtype), b0.to(x.dtype), cast(wh), cast(bh), cast(wv), cast(bv))

    def ref(x, w0, b0, wh, bh, wv, bv):
        cast = lambda ts: [t.to(x.dtype) for t in ts]  # noqa: E731
        return reference(x, w0.to(x.dtype), b0.to(x.dtype), cast(wh), cast(bh), cast(wv), cast(bv))

    assert_low_precision_bound(fused, ref, list(args64), torch.float16, floor=1e-3)


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_schedules_agree_on_gpu_tiles(dtype, channels_last):
    """GPU tile geometry (64×64 NCHW / 32×32×8 channels_last, persistent grid over ~400 tiles):
    single and split agree and both stay within 2× the reference's own low-precision error."""
    args64 = make(4, 9, 130, 197, 5, (7, 11, 21), channels_last, dtype=torch.float64, device="cuda", seed=11)
    gold = reference(*args64)
    cast = [args64[0].to(dtype), args64[1].to(dtype), args64[2].to(dtype),
            *[[t.to(dtype) for t in ts] for ts in args64[3:]]]
    ref_err = max_error(reference(*cast), gold)
    for schedule in kernels.SCHEDULES:
        err = max_error(run(schedule, *cast), gold)
        assert err <= 2 * ref_err + (1e-5 if dtype == torch.float32 else 1e-3), (schedule, err, ref_err)


def test_unknown_schedule_is_named(monkeypatch):
    monkeypatch.setenv("COVSEG_STRIP_CONV_SCHEDULE", "fast")
    with pytest.raises(ValueError, match="COVSEG_STRIP_CONV_SCHEDULE='fast'.*single, split"):
        kernels.forward_schedule()
