"""covseg::channel_attention: both Triton paths (gram, flash) vs the reference, both variants, with and
without the fused γ·out + x epilogue, forward and backward (dγ included).

fp32 tolerance: atol 2e-5, rtol 1e-4. Inputs are post-ReLU-like (≥ 0) as in Ref-Net's APM, scaled so the
softmax is not one-hot (a one-hot softmax would hide errors); one case uses raw large energies that
overflow fp16 (the op must keep them in fp32). The Triton path is forced with
COVSEG_CHANNEL_ATTENTION_PATH; the interpreter's gram tiles are 16 wide and N is split 3 ways whenever
N > 32, so the shapes below cross tile and split boundaries.
"""
import pytest
import torch

from covseg_fast.ops import channel_attention, use_backend
from covseg_fast.ops.channel_attention import path_for
from covseg_fast.ops.reference.attention import channel_attention as reference
from covseg_fast.ops.triton.attention_cost import PATH_ENV, channel_attention_path
from op_harness import (assert_same, backend_cases, cuda_only, generator, grads_of,
                        opcheck, random_shapes, run_backend)

ATOL, RTOL = 2e-5, 1e-4
VARIANTS = ["pfnet", "danet"]
PATHS = ["gram", "flash"]
# (B, C, N): N = 1, N = 121 (Ref-Net f5 11×11), non-powers of two, C > one tile, N > BLOCK_D (chunked).
FIXED = [(1, 5, 1), (2, 16, 37), (1, 40, 121), (2, 70, 9), (1, 16, 200)]


def path_cases():
    """(backend, device, path) for every non-reference backend × both Triton paths."""
    cases = []
    for case in backend_cases("channel_attention"):
        backend, device = case.values
        for path in PATHS:
            cases.append(pytest.param(backend, device, path, marks=case.marks, id=f"{case.id}-{path}"))
    return cases


CASES = path_cases()
REF_CASES = [pytest.param("reference", "cpu", "gram", id="reference-cpu")]


@pytest.fixture
def force_path(monkeypatch):
    return lambda path: monkeypatch.setenv(PATH_ENV, path)


def make(b, c, n, seed, dtype=torch.float32, device="cpu", scale=None):
    x = torch.rand(b, c, n, generator=generator(seed), dtype=torch.float64)
    x = x * (scale if scale is not None else 2.0 / n ** 0.5)
    return x.to(dtype).to(device).requires_grad_()


def make_gamma(value, device="cpu", dtype=torch.float32):
    return torch.tensor([value], dtype=dtype, device=device, requires_grad=True)


def check_fwd_bwd(backend, device, b, c, n, variant, seed, scale=None, gamma=None):
    x = make(b, c, n, seed, device=device, scale=scale)
    inputs = [x] if gamma is None else [x, make_gamma(gamma, device)]
    f = lambda t, *g: channel_attention(t, variant, *g)  # noqa: E731
    out = run_backend(backend, f, *inputs)
    refs = [t.detach().cpu().requires_grad_() for t in inputs]
    fr = lambda t, *g: reference(t, variant, *g)  # noqa: E731
    assert_same(out, fr(*refs).to(device), atol=ATOL, rtol=RTOL)
    grads = run_backend(backend, grads_of, f, inputs, seed=seed)
    assert_same(grads, grads_of(fr, refs, seed=seed), atol=ATOL, rtol=RTOL, what="grad")


@pytest.mark.parametrize("backend,device,path", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("b,c,n", FIXED)
def test_fixed_shapes_fp32(backend, device, path, variant, b, c, n, force_path):
    force_path(path)
    check_fwd_bwd(backend, device, b, c, n, variant, seed=c * n)


@pytest.mark.parametrize("backend,device,path", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_fp32(backend, device, path, seed, force_path):
    force_path(path)
    (b, c, n), = random_shapes(seed, 1, [(1, 2), (2, 80), (1, 150)])
    check_fwd_bwd(backend, device, b, c, n, VARIANTS[seed % 2], seed, gamma=[None, 0.7][seed // 2])


@pytest.mark.parametrize("backend,device,path", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gamma", [0.7, 0.0, -1.5])
@pytest.mark.parametrize("b,c,n", [(2, 16, 37), (1, 40, 121)])
def test_fused_residual_and_gamma_gradient(backend, device, path, variant, gamma, b, c, n, force_path):
    """out = γ·attention + x with dγ; γ = 0 (DANet's initial value) must still give the true dγ."""
    force_path(path)
    check_fwd_bwd(backend, device, b, c, n, variant, seed=n + 1, gamma=gamma)


@pytest.mark.parametrize("backend,device,path", CASES)
def test_gamma_dtype_and_shape_are_kept(backend, device, path, force_path):
    """A float64 γ of shape (1, 1) with an fp32 x: out in fp32, dγ float64 of shape (1, 1)."""
    force_path(path)
    x = make(2, 12, 40, seed=9, device=device)
    g = torch.full((1, 1), 0.4, dtype=torch.float64, device=device, requires_grad=True)
    out = run_backend(backend, channel_attention, x, "pfnet", g)
    assert out.dtype == torch.float32
    dx, dg = run_backend(backend, torch.autograd.grad, out, (x, g), torch.ones_like(out))
    assert dg.dtype == torch.float64 and dg.shape == (1, 1)
    xr, gr = x.detach().cpu().requires_grad_(), g.detach().cpu().requires_grad_()
    expected = torch.autograd.grad(reference(xr, "pfnet", gr), (xr, gr), torch.ones(out.shape))
    assert_same([dx.cpu(), dg.cpu()], list(expected), atol=ATOL, rtol=RTOL, what="grad")


@pytest.mark.parametrize("backend,device,path", CASES)
def test_lse_output_and_its_gradient(backend, device, path, force_path):
    force_path(path)
    x = make(2, 20, 50, seed=3, device=device)
    out, lse = run_backend(backend, torch.ops.covseg.channel_attention, x, "danet")
    xd = x.detach().cpu()
    assert_same(lse.cpu(), torch.logsumexp(-torch.bmm(xd, xd.transpose(1, 2)), -1), atol=ATOL, rtol=RTOL, what="lse")

    def both(t, op):
        o, s = op(t)
        return o.sum() * 0.1 + (s * torch.linspace(-1, 1, s.shape[-1], device=s.device)).sum()

    got = run_backend(backend, lambda: torch.autograd.grad(both(x, lambda t: torch.ops.covseg.channel_attention(
        t, "danet")), x)[0])
    xr = xd.clone().requires_grad_()
    ref_op = lambda t: (reference(t, "danet"), torch.logsumexp(-torch.bmm(t, t.transpose(1, 2)), -1))  # noqa: E731
    assert_same(got.cpu(), torch.autograd.grad(both(xr, ref_op), xr)[0], atol=ATOL, rtol=RTOL, what="grad via lse")


@pytest.mark.parametrize("backend,device,path", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_large_energies_stay_finite_in_fp16(backend, device, path, variant, force_path):
    """x ≥ 0 up to 50 over 121 pixels: energies ~1e5 overflow fp16; the op keeps them in fp32."""
    force_path(path)
    x = make(1, 24, 121, seed=7, scale=50.0).detach()
    energy = torch.bmm(x, x.transpose(1, 2))
    assert energy.max() > 65504  # would overflow a materialised fp16 energy
    out = run_backend(backend, channel_attention, x.half().to(device), variant)
    assert torch.isfinite(out).all()
    expected = reference(x.half(), variant)
    assert_same(out.cpu().float(), expected.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("backend,device,path", [*CASES, *REF_CASES])
@pytest.mark.parametrize("with_gamma", [False, True], ids=["plain", "gamma"])
def test_batch_zero(backend, device, path, with_gamma, force_path):
    force_path(path)
    x = make(0, 6, 11, seed=0, device=device)
    inputs = [x, make_gamma(0.5, device)] if with_gamma else [x]
    out, lse = run_backend(backend, torch.ops.covseg.channel_attention, x, "pfnet", *inputs[1:])
    assert out.shape == (0, 6, 11) and lse.shape == (0, 6)
    grads = run_backend(backend, torch.autograd.grad, out, inputs, torch.zeros_like(out))
    assert [g.shape for g in grads] == [t.shape for t in inputs]
    assert all(int(g.count_nonzero()) == 0 for g in grads)


@pytest.mark.parametrize("backend,device,path", CASES)
def test_output_and_grad_keep_a_channels_last_layout(backend, device, path, force_path):
    """A channels_last (B, C, H, W) map flattened is (B, C, N) with channel stride 1: out and dx keep it."""
    force_path(path)
    x4 = make(2, 18, 35, seed=5, device=device).detach().view(2, 18, 5, 7).contiguous(
        memory_format=torch.channels_last)
    x = x4.flatten(2).requires_grad_()
    assert x.stride()[1] == 1
    g = make_gamma(0.6, device)
    out = run_backend(backend, channel_attention, x, "pfnet", g)
    assert out.stride() == x.stride()
    dx, dg = run_backend(backend, torch.autograd.grad, out, (x, g), torch.ones_like(out))
    assert dx.stride() == x.stride()
    xr, gr = x.detach().cpu().contiguous().requires_grad_(), g.detach().cpu().requires_grad_()
    expected = reference(xr, "pfnet", gr)
    assert_same(out.cpu(), expected, atol=ATOL, rtol=RTOL)
    assert_same([dx.cpu(), dg.cpu()], list(torch.autograd.grad(expected, (xr, gr), torch.ones(out.shape))),
                atol=ATOL, rtol=RTOL, what="grad")


@pytest.mark.parametrize("backend,device,path", CASES)
def test_non_dense_input(backend, device, path, force_path):
    force_path(path)
    base = make(2, 10, 60, seed=8, device=device).detach()
    x = base[:, :, ::2].requires_grad_()
    out = run_backend(backend, channel_attention, x, "danet")
    assert_same(out.cpu(), reference(x.detach().cpu(), "danet"), atol=ATOL, rtol=RTOL)


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("b,c,n", [(2, 2048, 121), (2, 512, 121), (1, 64, 4096), (2, 64, 16384)])
def test_large_cuda_fp32(path, variant, b, c, n, force_path):
    if path == "flash" and n > 4096:
        pytest.skip("the flash path at N = 16384 is what the gram path replaces (minutes in fp32)")
    force_path(path)
    check_fwd_bwd("triton", "cuda", b, c, n, variant, seed=c, gamma=0.5)


def low_precision_outputs(fn, x, variant, dtype_g, seed=1):
    """[out, dx, dγ] of fn(x, variant, γ = 0.8) for a seeded random output gradient."""
    x = x.detach().requires_grad_()
    g = torch.tensor([0.8], dtype=dtype_g, device=x.device, requires_grad=True)
    out = fn(x, variant, g)
    return [out, *grads_of(lambda t, gg: fn(t, variant, gg), [x, g], seed=seed)]


def assert_each_within_twice_the_reference(backend, x64, variant, dtype):
    """Per output (not pooled: a large dγ would hide errors in out): the fused op in ``dtype`` errs at most
    2× the reference run in ``dtype`` (both against float64), plus 2e-4 of the output's scale."""
    gold = low_precision_outputs(reference, x64, variant, torch.float64)
    theirs = low_precision_outputs(reference, x64.to(dtype), variant, torch.float32)
    mine = run_backend(backend, low_precision_outputs, channel_attention, x64.to(dtype), variant, torch.float32)
    for name, a, r, e in zip(("out", "dx", "dgamma"), mine, theirs, gold):
        err = (a.double() - e).abs().max().item()
        ref_err = (r.double() - e).abs().max().item()
        bound = 2 * ref_err + 2e-4 * e.abs().max().item()
        assert err <= bound, f"{dtype} {name}: error {err:.3e} > {bound:.3e} (reference in {dtype}: {ref_err:.3e})"


@pytest.mark.parametrize("backend,device,path", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_low_precision_bound(backend, device, path, dtype, variant, force_path):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 tl.dot is wrong in the Triton interpreter; bf16 is tested on CUDA")
    force_path(path)
    assert_each_within_twice_the_reference(backend, make(2, 40, 121, seed=3, dtype=torch.float64, device=device),
                                           variant, dtype)


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("b,c,n", [(2, 512, 121), (2, 64, 4096)])
def test_bf16_on_cuda_larger_shapes(path, variant, b, c, n, force_path):
    force_path(path)
    x64 = make(b, c, n, seed=11, dtype=torch.float64, device="cuda")
    assert_each_within_twice_the_reference("triton", x64, variant, torch.bfloat16)


def opcheck_any(op, args, backend, device):
    """opcheck; under the interpreter without test_aot_dispatch_dynamic (it traces the triton_op body
    with fake tensors like torch.compile, and the interpreter reads their data pointers)."""
    if backend == "triton" and device == "cpu":
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        with use_backend(backend):
            result = torch.library.opcheck(op, args, test_utils=utils)
        assert all(v == "SUCCESS" for v in result.values()), result
    else:
        opcheck(op, args, backend=backend)



@pytest.mark.parametrize("backend,device,path", [*CASES, *REF_CASES])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("with_gamma", [False, True], ids=["plain", "gamma"])
def test_opcheck(backend, device, path, variant, with_gamma, force_path):
    force_path(path)
    x = make(2, 12, 40, seed=1, device=device)
    g = make_gamma(0.3, device) if with_gamma else None
    opcheck_any(torch.ops.covseg.channel_attention.default, (x, variant, g), backend, device)
    with use_backend(backend), torch.no_grad():
        out, lse = torch.ops.covseg.channel_attention(x, variant, g)
    saved = None if with_gamma else out
    args = (torch.randn_like(out), torch.randn_like(lse), x.detach(), saved, lse,
            None if g is None else g.detach(), variant)
    opcheck_any(torch.ops.covseg._channel_attention_backward.default, args, backend, device)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(variant):
    x = make(1, 4, 5, seed=4, dtype=torch.float64, scale=1.0)
    assert torch.autograd.gradcheck(lambda t: channel_attention(t, variant), (x,))
    assert torch.autograd.gradcheck(lambda t: torch.ops.covseg.channel_attention(t, variant)[1], (x,))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gamma", [0.0, 0.9])
def test_gradcheck_float64_with_gamma(variant, gamma):
    """dγ and dx through the fused residual (float64 runs on the reference backend)."""
    x = make(2, 4, 6, seed=6, dtype=torch.float64, scale=1.0)
    g = make_gamma(gamma, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t, gg: channel_attention(t, variant, gg), (x, g))


def test_danet_is_softmax_of_negative_energy_and_pfnet_of_energy():
    x = make(2, 6, 7, seed=5, dtype=torch.float64, scale=1.0).detach()
    e = torch.bmm(x, x.transpose(1, 2))
    assert_same(channel_attention(x, "danet"), torch.bmm(torch.softmax(-e, -1), x), atol=1e-12, rtol=1e-12)
    assert_same(channel_attention(x, "pfnet"), torch.bmm(torch.softmax(e, -1), x), atol=1e-12, rtol=1e-12)
    g = torch.tensor([0.3], dtype=torch.float64)
    assert_same(channel_attention(x, "pfnet", g), 0.3 * torch.bmm(torch.softmax(e, -1), x) + x,
                atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "c,n,dtype,path",
    [
        (64, 16384, torch.bfloat16, "gram"),  # Ref-Net apm_level=2 at 512²: flash would run 64× the FLOPs
        (256, 484, torch.bfloat16, "gram"),
        (512, 121, torch.bfloat16, "flash"),  # one value tile: flash recomputes nothing
        (2048, 121, torch.bfloat16, "flash"),  # refnet_f5: a materialised C×C costs more than it saves
        (2048, 121, torch.float32, "gram"),  # IEEE fp32 dots are slow: fewer FLOPs win
    ],
)
def test_path_rule(monkeypatch, c, n, dtype, path):
    monkeypatch.delenv(PATH_ENV, raising=False)
    assert channel_attention_path(16, c, n, dtype) == path
    assert path_for(torch.empty(16, c, n, dtype=dtype, device="meta")) == path


def test_path_override_and_its_errors(monkeypatch):
    monkeypatch.setenv(PATH_ENV, "flash")
    assert channel_attention_path(16, 64, 16384, torch.bfloat16) == "flash"
    monkeypatch.setenv(PATH_ENV, "fastest")
    with pytest.raises(ValueError, match="expected auto, gram or flash"):
        channel_attention_path(16, 64, 16384, torch.bfloat16)


@pytest.mark.compile
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_compile_fullgraph(variant):
    x = make(2, 10, 21, seed=6)
    g = make_gamma(0.4)

    def f(t, gg):
        return channel_attention(t * 2, variant, gg) + t

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, g)
    assert_same(out, f(x, g), atol=ATOL, rtol=RTOL)
    assert_same(list(torch.autograd.grad(out.sum(), (x, g))), list(torch.autograd.grad(f(x, g).sum(), (x, g))),
                atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: channel_attention(torch.zeros(2, 8)), ValueError, r"3-D \(B, C, N\)"),
        (lambda: channel_attention(torch.zeros(2, 8, 0)), ValueError, "must be ≥ 1"),
        (lambda: channel_attention(torch.zeros(2, 8, 3, dtype=torch.int32)), TypeError, "dtype must be float16"),
        (lambda: channel_attention(torch.zeros(2, 8, 3), "cbam"), ValueError, "variant must be 'pfnet' or 'danet'"),
        (lambda: channel_attention([[1.0]]), TypeError, "x must be a tensor"),
        (lambda: channel_attention(torch.zeros(2, 8, 3), "pfnet", 0.5), TypeError, "gamma must be a 1-element tensor"),
        (lambda: channel_attention(torch.zeros(2, 8, 3), "pfnet", torch.zeros(2)), ValueError, "exactly 1 element"),
        (lambda: channel_attention(torch.zeros(2, 8, 3), "pfnet", torch.zeros(1, dtype=torch.int64)), TypeError,
         "gamma must be a float tensor"),
        (lambda: channel_attention(torch.zeros(2, 8, 3), "pfnet", torch.zeros(1, device="meta")), ValueError,
         "gamma is on meta but x on cpu"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
