"""covseg::position_attention: flash-style kernels vs the reference, forward and backward.

fp32 tolerance: atol 2e-5, rtol 1e-4 on outputs and gradients (the kernels accumulate in fp32 like the
reference, but in a different order). fp16 via assert_low_precision_bound; bf16 on CUDA only.
"""
import pytest
import torch

from covseg_fast.ops import position_attention, use_backend
from covseg_fast.ops.reference.attention import position_attention as reference
from op_harness import (HAS_CUDA, assert_low_precision_bound, assert_same, backend_cases, cuda_only, generator,
                        grads_of, opcheck, random_shapes, run_backend)

CASES = backend_cases("position_attention")
ATOL, RTOL = 2e-5, 1e-4
# (B, Cq, C, N): N = 1, non-powers of two, N > one block, Cq ∈ {8..256} (256 > BLOCK_D: chunked qk),
# C ∈ {16, 64, 512, 2048} (512, 2048 > BLOCK_C: value dim split across programs), C non-power-of-two.
FIXED = [
    (1, 8, 16, 1),
    (2, 8, 16, 37),
    (1, 16, 64, 121),
    (2, 32, 24, 65),
    (1, 64, 16, 33),
    (1, 256, 16, 20),
    (1, 8, 512, 9),
    (1, 8, 2048, 9),
    (1, 8, 16, 260),
]


def make(b, cq, c, n, seed, dtype=torch.float32, device="cpu", scale_q=1.0):
    g = generator(seed)
    q = torch.randn(b, cq, n, generator=g, dtype=torch.float64) * scale_q
    k = torch.randn(b, cq, n, generator=g, dtype=torch.float64) * scale_q
    v = torch.randn(b, c, n, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(device).requires_grad_() for t in (q, k, v)]


def check_fwd_bwd(backend, device, b, cq, c, n, seed, scale=1.0):
    q, k, v = make(b, cq, c, n, seed, device=device, scale_q=0.5)
    out = run_backend(backend, position_attention, q, k, v, scale)
    qr, kr, vr = (t.detach().cpu().requires_grad_() for t in (q, k, v))
    expected = reference(qr, kr, vr, scale)
    assert_same(out, expected.to(device), atol=ATOL, rtol=RTOL)
    grads = run_backend(backend, grads_of, lambda *a: position_attention(*a, scale), [q, k, v], seed=seed)
    assert_same(grads, grads_of(lambda *a: reference(*a, scale), [qr, kr, vr], seed=seed), atol=ATOL, rtol=RTOL,
                what="grad")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("b,cq,c,n", FIXED)
def test_fixed_shapes_fp32(backend, device, b, cq, c, n):
    check_fwd_bwd(backend, device, b, cq, c, n, seed=n + c)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_fp32(backend, device, seed):
    (b, cq, c, n), = random_shapes(seed, 1, [(1, 2), (3, 40), (5, 80), (1, 150)])
    check_fwd_bwd(backend, device, b, cq, c, n, seed, scale=[1.0, 0.125, 2.0, -1.0][seed])


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("b,cq,c,n", [(1, 8, 16, 1024), (1, 16, 24, 577)])
def test_long_sequences_fp32(backend, device, b, cq, c, n):
    """N up to 1024 (a 32×32 map): many key blocks in every sweep (30–50 s under the interpreter)."""
    check_fwd_bwd(backend, device, b, cq, c, n, seed=n)


@pytest.mark.parametrize("backend,device", [*CASES, pytest.param("reference", "cpu", id="reference-cpu")])
def test_batch_zero(backend, device):
    q, k, v = make(0, 8, 16, 10, seed=0, device=device)
    out, lse = run_backend(backend, torch.ops.covseg.position_attention, q, k, v, 1.0)
    assert out.shape == (0, 16, 10) and lse.shape == (0, 10)
    grads = run_backend(backend, torch.autograd.grad, out, (q, k, v), torch.zeros_like(out))
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    assert all(int(g.count_nonzero()) == 0 for g in grads)


def allocation_sizes(fn) -> list[int]:
    """Bytes of every CPU allocation made while ``fn`` runs (the profiler's memory events: tensors allocated
    inside the custom ops' bodies count too, unlike with a dispatch mode, which sees only the op itself)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.nbytes() > 0]


@pytest.mark.parametrize("backend,device", CASES)
def test_no_n_by_n_tensor_is_ever_allocated(backend, device):
    """Forward and backward allocate O(N·C) only: the largest allocation is below one N×N fp32 matrix, while
    the reference's is at least one (N = 300 ≫ C = 16, so N·C tensors are 19× smaller than N×N)."""
    if device != "cpu":
        pytest.skip("the allocation record reads CPU memory events (the CUDA bound is test_memory_is_linear_in_n_cuda)")
    n = 300

    def run():
        q, k, v = make(1, 8, 16, n, seed=2)
        out = position_attention(q, k, v)
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

    fused = run_backend(backend, allocation_sizes, run)
    reference_sizes = run_backend("reference", allocation_sizes, run)
    assert max(reference_sizes) >= 4 * n * n  # the record does see an N×N matrix when one exists
    assert max(fused) < 4 * n * n, f"largest allocation {max(fused)} bytes ≥ N×N fp32 ({4 * n * n})"


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("b,cq,c,n", [(2, 32, 256, 4096), (2, 64, 512, 1024), (2, 256, 2048, 121)])
def test_large_n_cuda_fp32(b, cq, c, n):
    check_fwd_bwd("triton", "cuda", b, cq, c, n, seed=n)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("b,cq,c,n", [(2, 8, 16, 37), (1, 16, 64, 130)])
def test_low_precision_bound(backend, device, dtype, b, cq, c, n):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 tl.dot is wrong in the Triton interpreter; bf16 is tested on CUDA")
    inputs = [t.detach().to(device) for t in make(b, cq, c, n, seed=n, dtype=torch.float64, scale_q=0.5)]

    def fused(*a):
        a = [t.detach().requires_grad_() for t in a]
        return [run_backend(backend, position_attention, *a), *run_backend(backend, grads_of, position_attention, a)]

    def ref(*a):
        a = [t.detach().requires_grad_() for t in a]
        return [reference(*a), *grads_of(reference, a)]

    assert_low_precision_bound(fused, ref, inputs, dtype, floor=1e-4)


@pytest.mark.parametrize("backend,device", CASES)
def test_lse_output_and_its_gradient(backend, device):
    q, k, v = make(2, 8, 16, 23, seed=3, device=device)
    out, lse = run_backend(backend, torch.ops.covseg.position_attention, q, k, v, 0.7)
    energy = torch.bmm(q.detach().cpu().transpose(1, 2), k.detach().cpu()) * 0.7
    assert_same(lse.cpu(), torch.logsumexp(energy, -1), atol=ATOL, rtol=RTOL, what="lse")

    def both(*a):
        o, s = torch.ops.covseg.position_attention(*a, 0.7)
        return o.sum() * 0.1 + (s * torch.linspace(-1, 1, s.shape[-1], device=s.device)).sum()

    def both_ref(q_, k_, v_):
        e = torch.bmm(q_.transpose(1, 2), k_) * 0.7
        s = torch.logsumexp(e, -1)
        return reference(q_, k_, v_, 0.7).sum() * 0.1 + (s * torch.linspace(-1, 1, s.shape[-1])).sum()

    got = run_backend(backend, lambda: torch.autograd.grad(both(q, k, v), (q, k, v)))
    qr, kr, vr = (t.detach().cpu().requires_grad_() for t in (q, k, v))
    assert_same([g.cpu() for g in got], list(torch.autograd.grad(both_ref(qr, kr, vr), (qr, kr, vr))),
                atol=ATOL, rtol=RTOL, what="grad through lse")


def opcheck_triton(op, args, backend, device):
    """opcheck; under the interpreter without test_aot_dispatch_dynamic, which (like torch.compile) traces
    the triton_op body with fake tensors, and the interpreter then reads their data pointers."""
    if device == "cpu":
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        with use_backend(backend):
            result = torch.library.opcheck(op, args, test_utils=utils)
        assert all(v == "SUCCESS" for v in result.values()), result
    else:
        opcheck(op, args, backend=backend)


@pytest.mark.parametrize("backend,device", CASES)
def test_opcheck(backend, device):
    q, k, v = make(2, 8, 16, 19, seed=1, device=device)
    opcheck_triton(torch.ops.covseg.position_attention.default, (q, k, v, 1.0), backend, device)
    g = torch.randn(2, 16, 19, device=device)
    out, lse = torch.ops.covseg.position_attention(q.detach(), k.detach(), v.detach(), 1.0)
    opcheck_triton(torch.ops.covseg._position_attention_backward.default,
                   (g, None, q.detach(), k.detach(), v.detach(), out, lse, 1.0), backend, device)


def test_opcheck_reference():
    q, k, v = make(2, 8, 12, 10, seed=2)
    opcheck(torch.ops.covseg.position_attention.default, (q, k, v, 0.5), backend="reference")
    out, lse = torch.ops.covseg.position_attention(q.detach(), k.detach(), v.detach(), 0.5)
    opcheck(torch.ops.covseg._position_attention_backward.default,
            (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), out, lse, 0.5),
            backend="reference")


def test_gradcheck_float64():
    q, k, v = make(1, 3, 4, 5, seed=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: position_attention(*a, 0.9), (q, k, v))
    # lse output too (its gradient enters the backward as delta -= dlse)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.covseg.position_attention(*a, 0.9)[1], (q, k, v))


def test_reference_equals_softmax_formula():
    q, k, v = (t.detach() for t in make(2, 4, 6, 7, seed=5, dtype=torch.float64))
    attn = torch.softmax(torch.einsum("bdi,bdj->bij", q, k), -1)
    assert_same(position_attention(q, k, v), torch.einsum("bcj,bij->bci", v, attn), atol=1e-12, rtol=1e-12)


@pytest.mark.compile
def test_torch_compile_fullgraph():
    q, k, v = make(2, 8, 16, 21, seed=6)

    def f(q_, k_, v_):
        return position_attention(q_ * 2, k_, v_) + 1

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(q, k, v)
    assert_same(out, f(q, k, v), atol=ATOL, rtol=RTOL)
    g = torch.autograd.grad(out.sum(), (q, k, v))
    g_ref = torch.autograd.grad(f(q, k, v).sum(), (q, k, v))
    assert_same(list(g), list(g_ref), atol=ATOL, rtol=RTOL, what="grad")


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((_t(2, 8, 5), _t(2, 8, 5), _t(2, 16)), ValueError, r"v must be 3-D \(B, C, N\)"),
        ((_t(2, 8, 5), _t(2, 4, 5), _t(2, 16, 5)), ValueError, "q and k must have the same shape"),
        ((_t(2, 8, 5), _t(2, 8, 5), _t(2, 16, 6)), ValueError, "the B and N of q"),
        ((_t(2, 8, 0), _t(2, 8, 0), _t(2, 16, 0)), ValueError, "must be ≥ 1"),
        ((_t(2, 8, 5), _t(2, 8, 5), _t(2, 16, 5, dtype=torch.float16)), TypeError, "must share a dtype"),
        ((_t(2, 8, 5, dtype=torch.int64), _t(2, 8, 5), _t(2, 16, 5)), TypeError, "dtype must be float16"),
        (([1.0], _t(2, 8, 5), _t(2, 16, 5)), TypeError, "q must be a tensor"),
    ],
)
def test_bad_input_errors(args, error, match):
    with pytest.raises(error, match=match):
        position_attention(*args)


def test_non_finite_scale_is_an_error():
    with pytest.raises(ValueError, match="scale must be a finite number"):
        position_attention(_t(1, 8, 3), _t(1, 8, 3), _t(1, 8, 3), float("nan"))


def test_backend_reasons_are_reported():
    from covseg_fast.ops.position_attention import BACKENDS

    reasons = BACKENDS.reasons("cpu", *make(1, 8, 8, 4, seed=0, dtype=torch.float64), 1.0)
    assert reasons["reference"] is None
    assert "float64 runs on the reference" in reasons["triton"] or "TRITON_INTERPRET" in reasons["triton"]


@pytest.mark.cuda
@cuda_only
def test_memory_is_linear_in_n_cuda():
    """At N = 16384 (a 128×128 map) the N×N fp32 matrix alone would be 1 GiB per batch item."""
    q, k, v = make(1, 32, 256, 16384, seed=0, dtype=torch.bfloat16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = position_attention(q, k, v)
    torch.autograd.grad(out.float().sum(), (q, k, v))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB: not O(N·C)"
    assert HAS_CUDA
