"""covseg::cbam_channel_stats / cbam_spatial_pool / cbam_apply (+ their backward ops) vs the reference.

fp32 tolerance: atol = rtol = 1e-5 for the ops (only the fp32 summation order differs), 1e-4 for the
whole block (the BatchNorm over the conv output divides by a batch std and amplifies those last bits).
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from covseg_fast.ops import cbam_apply, cbam_channel_stats, cbam_spatial_pool, use_backend
from covseg_fast.ops.cbam import cbam as fused_cbam
from covseg_fast.ops.reference import cbam as ref
from covseg_fast.ops.triton import interpreting
from cbam_inputs import ULP, tie_free_op_inputs
from op_harness import opcheck as harness_opcheck
from op_harness import (HAS_CUDA, assert_low_precision_bound, assert_same, backend_cases, generator,
                        grads_of, random_shapes, reference_call, run_backend)

CASES = backend_cases("cbam_apply")
TOL = dict(atol=1e-5, rtol=1e-5)
# (B, C, H, W): odd sizes, a single pixel, a single channel, C not a multiple of the tile.
FIXED = [(1, 1, 1, 1), (2, 5, 7, 9), (3, 33, 5, 3), (1, 7, 1, 13), (2, 3, 11, 1), (1, 4, 9, 15)]  # last: 3 HW splits


def make(shape, seed, dtype=torch.float32, device="cpu", channels_last=False, ties=False):
    gen = generator(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if ties:  # few distinct values: many tied maxima over C and over HW
        x = torch.randint(-2, 3, shape, generator=gen).double()
    b, c, h, w = shape
    ca = torch.rand((b, c), generator=gen, dtype=torch.float64) + 0.1
    if ties:
        ca = torch.ones_like(ca)
    sa = torch.rand((b, 1, h, w), generator=gen, dtype=torch.float64)
    x = x.to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.to(device), ca.to(dtype).to(device), sa.to(dtype).to(device)


def ops_forward(x, ca, sa):
    mean, mx = cbam_channel_stats(x)
    return [mean, mx, cbam_spatial_pool(x, ca), cbam_apply(x, ca, sa)]


def ops_reference(x, ca, sa):
    mean, mx, _ = ref.channel_stats(x)
    return [mean, mx, ref.spatial_pool(x, ca)[0], ref.apply(x, ca, sa)]


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape", FIXED, ids=str)
def test_forward_and_backward_fixed_shapes(backend, device, channels_last, shape):
    x, ca, sa = make(shape, seed=sum(shape), device=device, channels_last=channels_last)
    out = run_backend(backend, ops_forward, x, ca, sa)
    assert_same(out, [t.to(device) for t in ops_reference(x, ca, sa)], **TOL)
    assert out[3].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    leaves = [t.detach().requires_grad_() for t in (x, ca, sa)]
    got = run_backend(backend, grads_of, ops_forward, leaves)
    want = grads_of(ops_reference, [t.detach().requires_grad_() for t in (x, ca, sa)])
    assert_same(got, want, **TOL, what="grads")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_random_shapes(backend, device, seed):
    (shape,) = random_shapes(seed, 1, [(1, 3), (1, 40), (1, 12), (1, 12)])
    x, ca, sa = make(shape, seed, device=device, channels_last=seed % 2 == 1)
    out = run_backend(backend, ops_forward, x, ca, sa)
    assert_same(out, ops_reference(x, ca, sa), **TOL)
    got = run_backend(backend, grads_of, ops_forward, [t.detach().requires_grad_() for t in (x, ca, sa)], seed=seed)
    want = grads_of(ops_reference, [t.detach().requires_grad_() for t in (x, ca, sa)], seed=seed)
    assert_same(got, want, **TOL, what="grads")


@pytest.mark.parametrize("backend,device", CASES)
def test_tied_maxima_share_the_gradient_like_amax(backend, device):
    x, ca, sa = make((2, 6, 9, 11), 3, device=device, ties=True)  # 2 HW splits: ties merge across splits
    got = run_backend(backend, grads_of, ops_forward, [t.detach().requires_grad_() for t in (x, ca, sa)])
    # the plain torch.amax / mean composition is the oracle here, not ops/reference
    def plain(x, ca, sa):
        x1 = x * ca[:, :, None, None]
        return [x.mean((2, 3)), x.amax((2, 3)), torch.stack([x1.amax(1), x1.mean(1)], 1), x1 * sa]
    want = grads_of(plain, [t.detach().requires_grad_() for t in (x, ca, sa)])
    assert_same(got, want, **TOL, what="grads with ties")
    _, _, count = ref.channel_stats(x)
    assert int(count.max()) > 1  # the case really has ties


@pytest.mark.parametrize("backend,device", CASES)
def test_nan_propagates_through_the_maxima_like_amax(backend, device):
    """A NaN pixel makes its channel's max (over HW) and its pixel's max (over C) NaN, as torch.amax does;
    a max that skips NaN would hide a broken activation behind a finite attention map."""
    x, ca, sa = make((2, 4, 9, 15), 4, device=device)  # 3 HW splits in the interpreter's stats pass
    x = x.clone()
    x[0, 1, 8, 14] = float("nan")  # in the last HW split
    x[1, 3, 0, 0] = float("nan")   # in the first
    got = run_backend(backend, ops_forward, x, ca, sa)
    x1 = x * ca[:, :, None, None]
    want = [x.mean((2, 3)), x.amax((2, 3)), torch.stack([x1.amax(1), x1.mean(1)], 1), x1 * sa]
    for name, a, e in zip(("mean", "max", "pooled", "apply"), got, want):
        torch.testing.assert_close(a.cpu(), e.cpu(), equal_nan=True, **TOL, msg=lambda m: f"{name}: {m}")
    assert got[1].isnan().sum() == 2 and got[2][:, 0].isnan().sum() == 2


@pytest.mark.parametrize("backend,device", CASES)
def test_batch_zero(backend, device):
    x, ca, sa = make((0, 4, 5, 6), 0, device=device)
    out = run_backend(backend, ops_forward, x, ca, sa)
    assert [tuple(t.shape) for t in out] == [(0, 4), (0, 4), (0, 2, 5, 6), (0, 4, 5, 6)]
    got = run_backend(backend, grads_of, ops_forward, [t.detach().requires_grad_() for t in (x, ca, sa)])
    assert [tuple(g.shape) for g in got] == [(0, 4, 5, 6), (0, 4), (0, 1, 5, 6)]


def block_inputs(shape, seed, hidden=2, k=7):
    gen = generator(seed)
    b, c, h, w = shape
    r = lambda *s: torch.randn(s, generator=gen, dtype=torch.float64)  # noqa: E731
    return [r(*shape), r(hidden, c) * 0.5, r(hidden) * 0.1, r(c, hidden) * 0.5, r(c) * 0.1, r(1, 2, k, k) * 0.2,
            torch.rand(1, generator=gen, dtype=torch.float64) + 0.5, r(1) * 0.1]


def block_fused(x, w1, b1, w2, b2, cw, g, beta):
    bn = functools.partial(F.batch_norm, running_mean=None, running_var=None, weight=g, bias=beta, training=True)
    return fused_cbam(x, w1, b1, w2, b2, cw, bn)


def block_reference(x, w1, b1, w2, b2, cw, g, beta):
    return ref.cbam(x, w1, b1, w2, b2, cw, g, beta, None, None, training=True)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 18, 6, 5)], ids=str)
def test_whole_block_matches_spec_fp32(backend, device, shape):
    args = [t.float().to(device).requires_grad_() for t in block_inputs(shape, 1)]
    out = run_backend(backend, block_fused, *args)
    assert_same(out, block_reference(*args), atol=1e-4, rtol=1e-4)
    got = run_backend(backend, grads_of, block_fused, args)
    assert_same(got, grads_of(block_reference, args), atol=1e-4, rtol=1e-4, what="block grads")


def _grads_fn(fn):
    def f(*inputs):
        leaves = [t.detach().requires_grad_() for t in inputs]
        return grads_of(fn, leaves)
    return f


LOW = [torch.float16, torch.bfloat16]  # CBAM has no tl.dot: the interpreter runs bf16 correctly


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (2, 24, 8, 6), (1, 40, 3, 5)], ids=str)
def test_low_precision_within_twice_the_reference_error(backend, device, dtype, shape):
    """Each output (mean, max, pooled, out; grads of x, ca, sa) on its own scale, tie-free inputs. Floor: one
    ulp, at the output's scale, of the dtype it is stored in (fp32 for the statistics), for outputs the
    reference gets (almost) exact, e.g. a max of exact inputs."""
    inputs = [t.to(device) for t in tie_free_op_inputs(shape, 7)]
    fused = lambda *a: run_backend(backend, ops_forward, *a)  # noqa: E731
    floors = [4 * ULP[torch.float32]] * 3 + [ULP[dtype]]  # mean, max, pooled are fp32; out is in dtype
    assert_low_precision_bound(fused, ops_reference, inputs, dtype, rel_floor=floors,
                               names=["mean", "max", "pooled", "out"])
    fused_g = lambda *a: run_backend(backend, _grads_fn(ops_forward), *a)  # noqa: E731
    assert_low_precision_bound(fused_g, _grads_fn(ops_reference), inputs, dtype, rel_floor=ULP[dtype],
                               names=["grad x", "grad ca", "grad sa"])


OPS = ["cbam_channel_stats", "cbam_spatial_pool", "cbam_apply"]
NO_AOT = ("test_schema", "test_autograd_registration", "test_faketensor")


def opcheck(op, args, backend):
    """op_harness.opcheck, minus aot_dispatch for Triton under the interpreter.

    AOT dispatch traces into the triton_op body with fake tensors, and the Triton *interpreter* then
    dereferences them (the same reason torch.compile tests skip under TRITON_INTERPRET=1); on CUDA the
    full opcheck runs.
    """
    if backend == "triton" and interpreting():
        with use_backend(backend):
            result = torch.library.opcheck(op, tuple(args), test_utils=NO_AOT)
        assert all(v == "SUCCESS" for v in result.values()), result
    else:
        harness_opcheck(op, args, backend=backend)


def _op_args(name, x, ca, sa):
    return {"cbam_channel_stats": (x,), "cbam_spatial_pool": (x, ca), "cbam_apply": (x, ca, sa)}[name]


@pytest.mark.parametrize("backend,device", [*CASES, pytest.param("reference", "cpu", id="reference-cpu")])
@pytest.mark.parametrize("name", OPS)
def test_opcheck(backend, device, name):
    x, ca, sa = make((2, 5, 4, 3), 11, device=device, channels_last=True)
    args = [t.requires_grad_() for t in _op_args(name, x, ca, sa)]
    opcheck(getattr(torch.ops.covseg, name).default, args, backend=backend)


@pytest.mark.parametrize("backend,device", [*CASES, pytest.param("reference", "cpu", id="reference-cpu")])
def test_opcheck_backward_ops(backend, device):
    x, ca, sa = make((2, 5, 4, 3), 12, device=device)
    mean, mx, cnt = reference_call(torch.ops.covseg.cbam_channel_stats, x)
    pooled, pcnt = reference_call(torch.ops.covseg.cbam_spatial_pool, x, ca)
    g = torch.randn_like(x)
    opcheck(torch.ops.covseg._cbam_channel_stats_backward.default, (mean, mx, x, mx, cnt), backend=backend)
    opcheck(torch.ops.covseg._cbam_spatial_pool_backward.default, (pooled, x, ca, pooled, pcnt), backend=backend)
    opcheck(torch.ops.covseg._cbam_apply_backward.default, (g, x, ca, sa), backend=backend)


def test_gradcheck_float64():
    x, ca, sa = make((2, 3, 4, 5), 5, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, ca, sa)]
    assert torch.autograd.gradcheck(lambda *a: tuple(ops_forward(*a)), leaves)
    args = [t.requires_grad_() for t in block_inputs((2, 3, 4, 5), 6, hidden=1, k=3)]
    assert torch.autograd.gradcheck(block_fused, args)


@pytest.mark.compile
def test_torch_compile_fullgraph():
    args = [t.float() for t in block_inputs((2, 6, 9, 7), 4)]
    compiled = torch.compile(block_fused, fullgraph=True)
    assert_same(compiled(*args), block_reference(*args), atol=1e-4, rtol=1e-4)
    leaves = [t.requires_grad_() for t in args]
    assert_same(grads_of(compiled, leaves), grads_of(block_reference, leaves), atol=1e-4, rtol=1e-4)


def _x(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: cbam_channel_stats(_x(2, 3, 4)), ValueError, r"must be \(B, C, H, W\), got shape \(2, 3, 4\)"),
        (lambda: cbam_channel_stats(_x(1, 3, 4, 4, dtype=torch.int64)), TypeError, "dtype must be float32"),
        (lambda: cbam_channel_stats(_x(1, 3, 0, 4)), ValueError, "C, H and W must be ≥ 1"),
        (lambda: cbam_channel_stats([1.0]), TypeError, "x must be a tensor"),
        (lambda: cbam_spatial_pool(_x(2, 3, 4, 4), _x(2, 4)), ValueError, r"ca must have shape \(2, 3\)"),
        (lambda: cbam_apply(_x(2, 3, 4, 4), _x(2, 3), _x(2, 4, 4)), ValueError, r"sa must have shape \(2, 1, 4, 4\)"),
        (lambda: cbam_apply(_x(2, 3, 4, 4), _x(2, 3, dtype=torch.int32), _x(2, 1, 4, 4)), TypeError,
         "ca must be floating point"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(1, 3), _x(1), _x(4, 1), _x(4), _x(1, 2, 7, 7), lambda s: s),
         ValueError, "do not fit C=4"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(1, 4), _x(1), _x(4, 1), _x(4), _x(1, 2, 6, 6), lambda s: s),
         ValueError, "k odd"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4), _x(3), _x(4, 2), _x(4), _x(1, 2, 7, 7)),
         ValueError, r"b1 must have shape \(2,\) for w1 of shape \(2, 4\), got \(3,\)"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4), _x(2), _x(4, 2), _x(1, 4), _x(1, 2, 7, 7)),
         ValueError, r"b2 must have shape \(4,\) for C=4, got \(1, 4\)"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4), _x(2), _x(4, 2), _x(4), _x(1, 2, 7, 5)),
         ValueError, r"square with k odd, got \(1, 2, 7, 5\)"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4), _x(2), _x(4, 2), _x(4), _x(1, 2, 3, 3), conv_bias=_x(2)),
         ValueError, r"conv_bias must have shape \(1,\), got \(2,\)"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4, dtype=torch.float64), _x(2), _x(4, 2), _x(4), _x(1, 2, 3, 3)),
         TypeError, "w1 is torch.float64 but x is torch.float32"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4), _x(2), _x(4, 2), _x(4), _x(1, 2, 3, 3, dtype=torch.int64)),
         TypeError, "conv_weight must be floating point"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4), _x(2), [[0.0, 0.0]] * 4, _x(4), _x(1, 2, 3, 3)),
         TypeError, "w2 must be a tensor"),
        (lambda: fused_cbam(_x(1, 4, 5, 5), _x(2, 4), _x(2), _x(4, 2), _x(4), _x(1, 2, 3, 3).to("meta")),
         ValueError, "conv_weight is on meta but x is on cpu"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_float64_is_served_by_the_reference_and_cuda_reason_is_reported():
    from covseg_fast.ops.cbam import BACKENDS

    assert BACKENDS["cbam_apply"].select("cpu", torch.zeros(1, 1, 1, 1, dtype=torch.float64)).name == "reference"
    if not HAS_CUDA:
        assert dict(BACKENDS["cbam_apply"].describe("cuda"))["triton"] is not None


def test_reference_backend_forced_by_environment(monkeypatch):
    from covseg_fast.ops.cbam import BACKENDS

    monkeypatch.setenv("COVSEG_BACKEND", "reference")
    assert BACKENDS["cbam_channel_stats"].select("cpu", torch.zeros(1, 1, 1, 1)).name == "reference"
    x, ca, sa = make((1, 3, 4, 4), 0)
    assert_same(ops_forward(x, ca, sa), ops_reference(x, ca, sa))
