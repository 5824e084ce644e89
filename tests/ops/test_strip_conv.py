"""covseg::strip_conv (MSCA depthwise strips): every backend vs the reference, forward and backward.

fp32 tolerance: |fused - ref| ≤ 1e-5·max|ref| + 1e-5·|ref| per element (outputs and every gradient;
both accumulate sums of ≤ 25·21·21 products in fp32, in different orders). fp16/bf16: at most 2× the
error of the reference run in that dtype, both against the float64 reference.
"""
import pytest
import torch

from covseg_fast.ops import strip_conv, use_backend
from covseg_fast.ops.reference.strip_conv import strip_conv as reference
from covseg_fast.ops.strip_conv import BACKENDS
from op_harness import (assert_low_precision_bound, backend_cases, generator, grads_of, opcheck, random_shapes,
                        run_backend, reference_call)

CASES = backend_cases("strip_conv")
MSCA = (5, (7, 11, 21))
# (B, C, H, W, (k0, strip sizes)): odd, prime, smaller than the 21-strip, a 1×1 image, custom kernels.
FIXED = [
    (2, 3, 13, 17, MSCA),
    (1, 4, 7, 5, MSCA),
    (1, 2, 1, 1, MSCA),
    (2, 3, 11, 24, (3, (5, 9))),
    (1, 2, 9, 6, (5, (3,))),
]


def make_inputs(b, c, h, w, kernels=MSCA, dtype=torch.float32, seed=0, device="cpu"):
    """x and MSCA-style weights (SegNeXt init scale) as a flat list [x, w0, b0, *wh, *bh, *wv, *bv]."""
    gen = generator(seed)
    k0, ks = kernels

    def rnd(*shape, scale=1.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

    x = rnd(b, c, h, w)
    w0, b0 = rnd(c, 1, k0, k0, scale=(2 / k0**2) ** 0.5), rnd(c, scale=0.1)
    wh = [rnd(c, 1, 1, k, scale=(2 / k) ** 0.5) for k in ks]
    bh = [rnd(c, scale=0.1) for _ in ks]
    wv = [rnd(c, 1, k, 1, scale=(2 / k) ** 0.5) for k in ks]
    bv = [rnd(c, scale=0.1) for _ in ks]
    return [x, w0, b0, *wh, *bh, *wv, *bv]


def split(flat):
    n = (len(flat) - 3) // 4
    return flat[0], flat[1], flat[2], *(list(flat[3 + k * n: 3 + (k + 1) * n]) for k in range(4))


def fused_flat(*flat):
    return strip_conv(*split(flat))


def reference_flat(*flat):
    return reference(*split(flat))


def assert_fp32_close(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, f"{what}[{i}]: {a.shape}/{a.dtype} vs {e.shape}/{e.dtype}"
        scale = e.abs().max().item() if e.numel() else 0.0
        torch.testing.assert_close(a.cpu(), e.cpu(), rtol=1e-5, atol=1e-5 * scale + 1e-7,
                                   msg=lambda m: f"{what}[{i}]: {m}")


def check_fwd_bwd(backend, device, flat):
    flat = [t.to(device).requires_grad_(True) for t in flat]
    out = run_backend(backend, fused_flat, *flat)
    gr = run_backend(backend, grads_of, fused_flat, flat)
    cpu = [t.detach().cpu().requires_grad_(True) for t in flat]
    assert_fp32_close([out.detach()], [reference_flat(*cpu).detach()], "output")
    assert_fp32_close(gr, grads_of(reference_flat, cpu), "grad")
    return out


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("b,c,h,w,kernels", FIXED)
def test_fixed_shapes_fp32(backend, device, b, c, h, w, kernels):
    check_fwd_bwd(backend, device, make_inputs(b, c, h, w, kernels, seed=h * w))


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("seed", range(2))
def test_random_shapes_fp32(backend, device, seed):
    (b, c, h, w), = random_shapes(seed, 1, [(1, 2), (1, 4), (3, 24), (3, 24)])
    check_fwd_bwd(backend, device, make_inputs(b, c, h, w, seed=seed))


@pytest.mark.parametrize("backend,device", CASES)
def test_channels_last_input(backend, device):
    flat = make_inputs(2, 4, 9, 10, seed=3)
    flat[0] = flat[0].contiguous(memory_format=torch.channels_last)
    out = check_fwd_bwd(backend, device, flat)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend,device", CASES)
def test_batch_zero(backend, device):
    flat = [t.to(device).requires_grad_(True) for t in make_inputs(0, 3, 8, 8)]
    out = run_backend(backend, fused_flat, *flat)
    assert out.shape == (0, 3, 8, 8)
    grads = run_backend(backend, grads_of, fused_flat, flat)
    assert grads[0].shape == (0, 3, 8, 8)
    assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, flat))


def _grads_fn(fn):
    def g(*flat):
        flat = [t.detach().requires_grad_(True) for t in flat]
        return [fn(*flat).detach(), *grads_of(fn, flat)]
    return g


@pytest.mark.parametrize("backend,device", [c for c in CASES if c.id.endswith("-cpu")] or
                         [pytest.param("triton", "cpu", marks=pytest.mark.skip(reason="no CPU triton case"))])
@pytest.mark.parametrize("dtype", [torch.float16], ids=str)
def test_low_precision_fwd_bwd_cpu(backend, device, dtype):
    inputs64 = make_inputs(2, 3, 12, 13, seed=7, dtype=torch.float64)
    fused, ref = _grads_fn(lambda *f: run_backend(backend, fused_flat, *f)), _grads_fn(reference_flat)
    assert_low_precision_bound(fused, ref, inputs64, dtype, floor=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", [c for c in CASES if c.id.endswith("-cuda")] or
                         [pytest.param("triton", "cuda", marks=pytest.mark.skip(reason="no CUDA triton case"))])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_fwd_bwd_cuda(backend, device, dtype):
    inputs64 = make_inputs(2, 8, 40, 37, seed=8, dtype=torch.float64, device="cuda")
    fused, ref = _grads_fn(lambda *f: run_backend(backend, fused_flat, *f)), _grads_fn(reference_flat)
    assert_low_precision_bound(fused, ref, inputs64, dtype, floor=1e-3)


@pytest.mark.parametrize("backend,device", CASES)
def test_opcheck(backend, device):
    x, w0, b0, wh, bh, wv, bv = split([t.to(device) for t in make_inputs(1, 2, 6, 7, (3, (5,)), seed=4)])
    g = torch.randn(x.shape, generator=generator(2)).to(device)
    fwd, bwd = torch.ops.covseg.strip_conv.default, torch.ops.covseg._strip_conv_backward.default
    if device == "cpu":
        # Under TRITON_INTERPRET=1 the aot_dispatch check traces the Triton kernel with fake tensors,
        # which the interpreter cannot run (same limitation as torch.compile there): check the rest.
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        with use_backend(backend):
            for op, args in ((fwd, (x, w0, b0, wh, bh, wv, bv)), (bwd, (g, x, w0, b0, wh, bh, wv, bv))):
                result = torch.library.opcheck(op, args, test_utils=utils)
                assert all(v == "SUCCESS" for v in result.values()), result
    else:
        opcheck(fwd, (x, w0, b0, wh, bh, wv, bv), backend=backend)
        opcheck(bwd, (g, x, w0, b0, wh, bh, wv, bv), backend=backend)


@pytest.mark.parametrize("kernels", [MSCA, (3, (5, 9))], ids=["msca", "3_5_9"])
def test_opcheck_reference(kernels):
    x, w0, b0, wh, bh, wv, bv = split(make_inputs(2, 3, 7, 9, kernels, seed=5))
    opcheck(torch.ops.covseg.strip_conv.default, (x, w0, b0, wh, bh, wv, bv), backend="reference")
    g = torch.randn(x.shape, generator=generator(1))
    opcheck(torch.ops.covseg._strip_conv_backward.default, (g, x, w0, b0, wh, bh, wv, bv), backend="reference")


@pytest.mark.parametrize("kernels", [MSCA, (3, (3, 5))], ids=["msca", "3_3_5"])
def test_gradcheck_float64(kernels):
    # float64 is served by the reference backend of the op (the Triton kernels take fp32/fp16/bf16).
    flat = [t.requires_grad_(True) for t in make_inputs(1, 2, 5, 6, kernels, dtype=torch.float64, seed=6)]
    assert BACKENDS.select("cpu", flat[0]).name == "reference"
    assert torch.autograd.gradcheck(fused_flat, flat, eps=1e-6, atol=1e-7)


def test_reference_matches_module_composition():
    # The spec: a0 + Σ v(h(a0)), horizontal first, written out with nn.Conv2d layers.
    x, w0, b0, wh, bh, wv, bv = split(make_inputs(1, 3, 10, 12, seed=2))
    a0 = torch.nn.functional.conv2d(x, w0, b0, padding=2, groups=3)
    s = a0.clone()
    for k, wh_i, bh_i, wv_i, bv_i in zip((7, 11, 21), wh, bh, wv, bv):
        t = torch.nn.functional.conv2d(a0, wh_i, bh_i, padding=(0, k // 2), groups=3)
        s += torch.nn.functional.conv2d(t, wv_i, bv_i, padding=(k // 2, 0), groups=3)
    torch.testing.assert_close(reference(x, w0, b0, wh, bh, wv, bv), s, rtol=1e-6, atol=1e-6)


@pytest.mark.compile
def test_torch_compile_fullgraph_cpu():
    flat = [t.requires_grad_(True) for t in make_inputs(2, 3, 9, 11, seed=9)]

    def f(*flat):
        return fused_flat(*flat) * 2

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    out = compiled(*flat)
    expected = reference_flat(*flat) * 2
    assert_fp32_close([out.detach()], [expected.detach()], "compiled output")
    assert_fp32_close(grads_of(compiled, flat), grads_of(lambda *a: reference_flat(*a) * 2, flat), "compiled grad")


def _bad(**change):
    x, w0, b0, wh, bh, wv, bv = split(make_inputs(1, 4, 8, 8))
    args = dict(x=x, w0=w0, b0=b0, wh=wh, bh=bh, wv=wv, bv=bv)
    args.update({k: (v(args) if callable(v) else v) for k, v in change.items()})
    return lambda: strip_conv(**args)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (_bad(x=torch.zeros(4, 8, 8)), ValueError, r"x must be \(B, C, H, W\)"),
        (_bad(x=torch.zeros(1, 3, 8, 8)), ValueError, r"w0 must be a depthwise weight \(C=3"),
        (_bad(x=torch.zeros(1, 4, 8, 8, dtype=torch.long)), TypeError, "floating-point"),
        (_bad(w0=torch.zeros(4, 1, 4, 4)), ValueError, "kernel sizes must be odd, w0 has 4×4"),
        (_bad(w0=torch.zeros(4, 1, 5, 3)), ValueError, r"w0 must be square"),
        (_bad(wh=lambda a: [torch.zeros(4, 1, 7, 1), *a["wh"][1:]]), ValueError, r"wh\[0\] must be \(C, 1, 1, k\)"),
        (_bad(wv=lambda a: [*a["wv"][:2], torch.zeros(4, 1, 20, 1)]), ValueError, "odd, wv\\[2\\] has 20×1"),
        (_bad(wv=lambda a: [torch.zeros(4, 1, 9, 1), *a["wv"][1:]]), ValueError, "horizontal size 7 but vertical size 9"),
        (_bad(bh=lambda a: a["bh"][:2]), ValueError, "one entry per branch"),
        (_bad(b0=torch.zeros(3)), ValueError, r"bias b0 must have shape \(4,\)"),
        (_bad(b0=torch.zeros(4, dtype=torch.float64)), TypeError, "b0 has dtype torch.float64 but x has torch.float32"),
        (_bad(bv=lambda a: [*a["bv"][:1], torch.zeros(4, device="meta"), *a["bv"][2:]]), ValueError,
         r"bv\[1\] is on meta but x is on cpu"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_reference_backend_forced_by_environment(monkeypatch):
    monkeypatch.setenv("COVSEG_BACKEND", "reference")
    x = torch.zeros(1, 2, 4, 4)
    assert BACKENDS.select("cpu", x).name == "reference"
    flat = make_inputs(1, 2, 6, 6, seed=1)
    torch.testing.assert_close(fused_flat(*flat), reference_call(reference_flat, *flat), rtol=0, atol=0)


def test_more_than_three_branches_served_by_reference():
    flat = make_inputs(1, 2, 9, 9, (3, (3, 5, 7, 9)), seed=11)
    x, w0, b0, wh, bh, wv, bv = split(flat)
    assert "at most 3" in BACKENDS.get("triton").accepts(x, wh)
    assert BACKENDS.select("cpu", x, wh).name == "reference"
    torch.testing.assert_close(fused_flat(*flat), reference_flat(*flat), rtol=0, atol=0)


@pytest.mark.compile
def test_torch_export_keeps_the_op():
    x, w0, b0, wh, bh, wv, bv = split(make_inputs(1, 2, 8, 9, seed=12))

    class M(torch.nn.Module):
        def forward(self, x):
            return strip_conv(x, w0, b0, wh, bh, wv, bv)

    exported = torch.export.export(M(), (x,))
    assert "covseg.strip_conv" in str(exported.graph)
    torch.testing.assert_close(exported.module()(x), reference(x, w0, b0, wh, bh, wv, bv), rtol=1e-6, atol=1e-6)
