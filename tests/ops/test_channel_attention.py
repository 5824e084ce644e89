"""covseg::channel_attention: fused kernels vs the reference for both variants, forward and backward.

fp32 tolerance: atol 2e-5, rtol 1e-4. Inputs are post-ReLU-like (≥ 0) as in Ref-Net's APM, scaled so the
softmax is not one-hot (a one-hot softmax would hide errors); one case uses raw large energies that
overflow fp16 (the op must keep them in fp32).
"""
import pytest
import torch

from covseg_fast.ops import channel_attention, use_backend
from covseg_fast.ops.reference.attention import channel_attention as reference
from op_harness import (assert_low_precision_bound, assert_same, backend_cases, cuda_only, generator, grads_of,
                        opcheck, random_shapes, run_backend)

CASES = backend_cases("channel_attention")
ATOL, RTOL = 2e-5, 1e-4
VARIANTS = ["pfnet", "danet"]
# (B, C, N): N = 1, N = 121 (Ref-Net f5 11×11), non-powers of two, C > one block, N > BLOCK_D (chunked).
FIXED = [(1, 5, 1), (2, 16, 37), (1, 40, 121), (2, 70, 9), (1, 16, 200)]


def make(b, c, n, seed, dtype=torch.float32, device="cpu", scale=None):
    x = torch.rand(b, c, n, generator=generator(seed), dtype=torch.float64)
    x = x * (scale if scale is not None else 2.0 / n ** 0.5)
    return x.to(dtype).to(device).requires_grad_()


def check_fwd_bwd(backend, device, b, c, n, variant, seed, scale=None):
    x = make(b, c, n, seed, device=device, scale=scale)
    out = run_backend(backend, channel_attention, x, variant)
    xr = x.detach().cpu().requires_grad_()
    assert_same(out, reference(xr, variant).to(device), atol=ATOL, rtol=RTOL)
    grads = run_backend(backend, grads_of, lambda t: channel_attention(t, variant), [x], seed=seed)
    assert_same(grads, grads_of(lambda t: reference(t, variant), [xr], seed=seed), atol=ATOL, rtol=RTOL, what="grad")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("b,c,n", FIXED)
def test_fixed_shapes_fp32(backend, device, variant, b, c, n):
    check_fwd_bwd(backend, device, b, c, n, variant, seed=c * n)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_fp32(backend, device, seed):
    (b, c, n), = random_shapes(seed, 1, [(1, 2), (2, 80), (1, 150)])
    check_fwd_bwd(backend, device, b, c, n, VARIANTS[seed % 2], seed)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_large_energies_stay_finite_in_fp16(backend, device, variant):
    """x ≥ 0 up to 50 over 121 pixels: energies ~1e5 overflow fp16; the op keeps them in fp32."""
    x = make(1, 24, 121, seed=7, scale=50.0).detach()
    energy = torch.bmm(x, x.transpose(1, 2))
    assert energy.max() > 65504  # would overflow a materialised fp16 energy
    out = run_backend(backend, channel_attention, x.half().to(device), variant)
    assert torch.isfinite(out).all()
    expected = reference(x.half(), variant)
    assert_same(out.cpu().float(), expected.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("b,c,n", [(2, 2048, 121), (2, 512, 121), (1, 64, 4096)])
def test_large_cuda_fp32(variant, b, c, n):
    check_fwd_bwd("triton", "cuda", b, c, n, variant, seed=c)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_low_precision_bound(backend, device, dtype, variant):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 tl.dot is wrong in the Triton interpreter; bf16 is tested on CUDA")
    inputs = [make(2, 40, 121, seed=3, dtype=torch.float64).detach().to(device)]

    def fused(x):
        x = x.detach().requires_grad_()
        f = lambda t: channel_attention(t, variant)  # noqa: E731
        return [run_backend(backend, f, x), *run_backend(backend, grads_of, f, [x])]

    def ref(x):
        x = x.detach().requires_grad_()
        f = lambda t: reference(t, variant)  # noqa: E731
        return [f(x), *grads_of(f, [x])]

    assert_low_precision_bound(fused, ref, inputs, dtype, floor=1e-4)


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


@pytest.mark.parametrize("backend,device", [*CASES, pytest.param("reference", "cpu", id="reference-cpu")])
@pytest.mark.parametrize("variant", VARIANTS)
def test_opcheck(backend, device, variant):
    x = make(2, 12, 17, seed=1, device=device)
    opcheck_any(torch.ops.covseg.channel_attention.default, (x, variant), backend, device)
    with use_backend(backend):
        out, lse = torch.ops.covseg.channel_attention(x.detach(), variant)
    args = (torch.randn_like(out), torch.randn_like(lse), x.detach(), out, lse, variant)
    opcheck_any(torch.ops.covseg._channel_attention_backward.default, args, backend, device)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(variant):
    x = make(1, 4, 5, seed=4, dtype=torch.float64, scale=1.0)
    assert torch.autograd.gradcheck(lambda t: channel_attention(t, variant), (x,))
    assert torch.autograd.gradcheck(lambda t: torch.ops.covseg.channel_attention(t, variant)[1], (x,))


def test_danet_is_softmax_of_negative_energy_and_pfnet_of_energy():
    x = make(2, 6, 7, seed=5, dtype=torch.float64, scale=1.0).detach()
    e = torch.bmm(x, x.transpose(1, 2))
    assert_same(channel_attention(x, "danet"), torch.bmm(torch.softmax(-e, -1), x), atol=1e-12, rtol=1e-12)
    assert_same(channel_attention(x, "pfnet"), torch.bmm(torch.softmax(e, -1), x), atol=1e-12, rtol=1e-12)


@pytest.mark.compile
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_compile_fullgraph(variant):
    x = make(2, 10, 21, seed=6)

    def f(t):
        return channel_attention(t * 2, variant) + t

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x)
    assert_same(out, f(x), atol=ATOL, rtol=RTOL)
    assert_same(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(f(x).sum(), x)[0], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: channel_attention(torch.zeros(2, 8)), ValueError, r"3-D \(B, C, N\)"),
        (lambda: channel_attention(torch.zeros(2, 8, 0)), ValueError, "must be ≥ 1"),
        (lambda: channel_attention(torch.zeros(2, 8, 3, dtype=torch.int32)), TypeError, "dtype must be float16"),
        (lambda: channel_attention(torch.zeros(2, 8, 3), "cbam"), ValueError, "variant must be 'pfnet' or 'danet'"),
        (lambda: channel_attention([[1.0]]), TypeError, "x must be a tensor"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
