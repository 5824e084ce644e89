"""The fused CBAM block backward (ops.cbam.cbam: passes A, B, C) against the reference composition.

Oracle: ``ops/reference/cbam.cbam`` (plain PyTorch, autograd, torch.amax for the maxima) with the same weights.
fp32 tolerance: atol = rtol = 1e-4 for the block's output, grad_x, every parameter gradient and the BatchNorm
running statistics (only the fp32 summation order differs, but the BN divides by a batch std of the conv
output and amplifies those last bits); atol = rtol = 1e-5 for the three backward ops on their own (sums of
≤ C·HW fp32 products in another order). fp16 and bf16 (ops and the whole block; the interpreter on CPU, CUDA on
a GPU): each output at most twice the error of the reference run in that dtype, both against float64, on
inputs with no near-tied maximum (``tie_free_block``). Launch counts of nn.CBAM: ``test_launch_counts``.
"""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from covseg_fast.nn import CBAM
from covseg_fast.ops import use_backend
from covseg_fast.ops.cbam import BACKENDS
from covseg_fast.ops.cbam import cbam as fused_cbam
from covseg_fast.ops.reference import cbam as ref
from covseg_fast.ops.triton import interpreting
from cbam_inputs import BLOCK_FLOOR_ULPS, BLOCK_NAMES, ULP, tie_free_block
from op_harness import (assert_low_precision_bound, assert_per_output_bound, assert_same, backend_cases, generator,
                        random_shapes, reference_call, run_backend)
from op_harness import opcheck as harness_opcheck

BWD_OPS = ["_cbam_apply_backward_reduce", "_cbam_spatial_pool_backward_reduce", "_cbam_block_backward_x"]
CASES = backend_cases("_cbam_block_backward_x")
ALL = [*CASES, pytest.param("reference", "cpu", id="reference-cpu")]
BLOCK_TOL = dict(atol=1e-4, rtol=1e-4)
OP_TOL = dict(atol=1e-5, rtol=1e-5)
# (B, C, H, W): odd sizes, batch 1, one row / one column, C above the 32-channel tile, a single channel.
FIXED = [(2, 5, 7, 9), (1, 7, 1, 13), (2, 3, 11, 1), (3, 33, 5, 3), (1, 1, 3, 3), (1, 4, 9, 15)]


# ---------------------------------------------------------------- the block, functional form
def block_params(c, seed, hidden=None, k=7, dtype=torch.float32, device="cpu"):
    """[w1, b1, w2, b2, conv_weight, bn_weight, bn_bias] with non-trivial values (BN γ ≠ 0, biases ≠ 0)."""
    gen = generator(seed)
    hidden = hidden or max(1, c // 4)
    r = lambda *s: torch.randn(s, generator=gen, dtype=torch.float64)  # noqa: E731
    params = [r(hidden, c) * 0.5, r(hidden) * 0.1, r(c, hidden) * 0.5, r(c) * 0.1, r(1, 2, k, k) * 0.2,
              torch.rand(1, generator=gen, dtype=torch.float64) + 0.5, r(1) * 0.1]
    return [p.to(device=device, dtype=dtype) for p in params]


def make_x(shape, seed, dtype=torch.float32, device="cpu", channels_last=False):
    x = torch.randn(shape, generator=generator(seed + 1000), dtype=torch.float64).to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def running(device="cpu"):
    return [torch.full((1,), 0.2, device=device), torch.full((1,), 1.5, device=device)]


def fused_block(x, w1, b1, w2, b2, cw, gamma, beta, stats=None, training=True, momentum=0.01):
    rm, rv = stats or (None, None)
    bn = functools.partial(F.batch_norm, running_mean=rm, running_var=rv, weight=gamma, bias=beta,
                           training=training, momentum=momentum, eps=1e-5)
    return fused_cbam(x, w1, b1, w2, b2, cw, bn)


def reference_block(x, w1, b1, w2, b2, cw, gamma, beta, stats=None, training=True, momentum=0.01):
    rm, rv = stats or (None, None)
    return ref.cbam(x, w1, b1, w2, b2, cw, gamma, beta, rm, rv, training, momentum=momentum, eps=1e-5)


def check_block(backend, x, params, training=True, seed=0, what="block"):
    """Fused (``backend`` forced) vs reference: output, grads of x and all 7 parameters, BN running stats."""
    device = x.device.type
    leaves_f = [t.detach().clone().requires_grad_() for t in (x, *params)]
    leaves_r = [t.detach().clone().requires_grad_() for t in (x, *params)]
    stats_f, stats_r = running(device), running(device)
    out_f = run_backend(backend, fused_block, *leaves_f, stats=stats_f, training=training)
    out_r = reference_block(*leaves_r, stats=stats_r, training=training)
    assert_same(out_f, out_r, **BLOCK_TOL, what=f"{what} output")
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 else None
    if fmt is not None:
        assert out_f.is_contiguous(memory_format=fmt)
    g = torch.randn(out_r.shape, generator=generator(seed), dtype=torch.float32).to(out_r)
    got = run_backend(backend, torch.autograd.grad, out_f, leaves_f, g)
    want = torch.autograd.grad(out_r, leaves_r, g)
    assert_same(got, want, **BLOCK_TOL, what=f"{what} grads [x, w1, b1, w2, b2, conv, γ, β]")
    assert_same(stats_f, stats_r, **BLOCK_TOL, what=f"{what} running stats")
    return got


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape", FIXED, ids=str)
def test_block_forward_backward_fixed_shapes(backend, device, channels_last, shape):
    x = make_x(shape, sum(shape), device=device, channels_last=channels_last)
    check_block(backend, x, block_params(shape[1], sum(shape), k=7 if sum(shape) % 2 else 3, device=device),
                seed=sum(shape))


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("seed", range(4))
def test_block_forward_backward_random_shapes(backend, device, seed):
    (shape,) = random_shapes(100 + seed, 1, [(1, 3), (1, 40), (1, 12), (1, 12)])
    training = shape[0] * shape[2] * shape[3] > 1  # BN batch statistics need more than one value
    x = make_x(shape, seed, device=device, channels_last=seed % 2 == 1)
    check_block(backend, x, block_params(shape[1], seed, device=device), training=training, seed=seed,
                what=f"{shape}")


@pytest.mark.parametrize("backend,device", ALL)
def test_block_eval_mode_uses_running_stats(backend, device):
    x = make_x((2, 6, 5, 7), 4, device=device, channels_last=True)
    check_block(backend, x, block_params(6, 4, device=device), training=False)


@pytest.mark.parametrize("backend,device", ALL)
def test_block_tied_maxima_share_the_gradient_like_amax(backend, device):
    """Integer x: many tied maxima over HW per channel; w2 = b2 = 0 makes ca = ½ everywhere, so x·ca ties over C."""
    gen = generator(8)
    x = torch.randint(-2, 3, (2, 6, 9, 11), generator=gen).float().to(device)
    params = block_params(6, 8, device=device)
    params[2].zero_(), params[3].zero_()
    check_block(backend, x, params)
    assert int(ref.channel_stats(x)[2].max()) > 1  # ties over HW
    assert int(ref.spatial_pool(x, torch.ones(2, 6, device=x.device))[1].max()) > 1  # ties over C


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("which", ["x_only", "params_only"])
def test_block_partial_requires_grad(backend, device, which):
    x = make_x((2, 5, 6, 7), 9, device=device)
    params = block_params(5, 9, device=device)
    leaves_f = [x.clone().requires_grad_(which == "x_only"),
                *(p.clone().requires_grad_(which == "params_only") for p in params)]
    leaves_r = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves_f]
    g = torch.randn((2, 5, 6, 7), generator=generator(1)).to(device)
    need = [t for t in leaves_f if t.requires_grad]
    got = run_backend(backend, lambda: torch.autograd.grad(fused_block(*leaves_f), need, g))
    want = torch.autograd.grad(reference_block(*leaves_r), [t for t in leaves_r if t.requires_grad], g)
    assert_same(got, want, **BLOCK_TOL, what=which)


@pytest.mark.parametrize("backend,device", ALL)
def test_block_batch_zero(backend, device):
    x = make_x((0, 4, 5, 6), 0, device=device).requires_grad_()
    params = [p.requires_grad_() for p in block_params(4, 0, device=device)]
    out = run_backend(backend, fused_block, x, *params, stats=running(device), training=False)
    assert tuple(out.shape) == (0, 4, 5, 6)
    grads = run_backend(backend, torch.autograd.grad, out, [x, *params], torch.zeros_like(out))
    assert [tuple(g.shape) for g in grads] == [tuple(t.shape) for t in (x, *params)]
    assert all(int(g.count_nonzero()) == 0 for g in grads)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.calls.append((func.overloadpacket.__name__, [t.numel() for t in outs if isinstance(t, torch.Tensor)]))
        return out


@pytest.mark.parametrize("backend,device", ALL)
def test_backward_reads_x_three_times_and_writes_grad_x_once(backend, device):
    """Backward = passes A, B, C once each; the only full-size tensor any backward op creates is grad_x (pass C).

    (The per-op backward ops, which each wrote a full-size grad_x that autograd then summed, are not called.)
    """
    x = make_x((2, 16, 6, 5), 3, device=device, channels_last=True).requires_grad_()
    params = [p.requires_grad_() for p in block_params(16, 3, device=device)]
    out = run_backend(backend, fused_block, x, *params)
    g, rec = torch.ones_like(out), _Recorder()
    with rec, use_backend(backend):
        out.backward(g)
    covseg = [name for name, _ in rec.calls if name.startswith("_cbam")]
    assert covseg == ["_cbam_apply_backward_reduce", "_cbam_spatial_pool_backward_reduce", "_cbam_block_backward_x"]
    full = [name for name, sizes in rec.calls if x.numel() in sizes and name != "detach"]
    assert full == ["_cbam_block_backward_x"], rec.calls
    assert x.grad is not None and x.grad.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- launch counts of nn.CBAM (benchmarks/README.md)
NO_KERNEL = {"detach", "view", "_unsafe_view", "t", "transpose", "expand", "slice", "select", "unsqueeze", "squeeze",
             "alias", "as_strided", "empty", "new_empty", "new_empty_strided", "empty_strided", "empty_like", "split",
             "split_with_sizes", "lift_fresh", "_reshape_alias"}  # views and allocations: no kernel
# Top-level ops that launch a kernel (each covseg op once) per nn.CBAM call, with no HW split in the stats pass
# (as at refnet_f5). Eval: inference under no_grad, BatchNorm folded into the conv (the fold cached).
# bf16 adds casts: forward 2 (MLP input, pooled map); backward 2 (grad_sa for the σ backward, grad_logits for
# the MLP backward, which runs in the weights' dtype as autograd's would).
LAUNCHES = {torch.float32: {"eval": 11, "train": 13, "backward": 16},
            torch.bfloat16: {"eval": 13, "train": 15, "backward": 18}}
TRITON_KERNELS = {"eval": ["_cbam_stats_kernel", "_cbam_pool_kernel", "_cbam_apply_kernel"],
                  "train": ["_cbam_stats_kernel", "_cbam_pool_kernel", "_cbam_apply_kernel"],
                  "backward": ["_cbam_apply_backward_kernel", "_cbam_pool_backward_kernel", "_cbam_block_backward_x_kernel"]}


class _Launches(TorchDispatchMode):
    """Names of the top-level ops that launch a kernel (a covseg op counts once, whatever it runs inside)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def triton_launches(monkeypatch):
    """Names of the Triton kernels launched (JITFunction.run on a GPU, InterpretedFunction.run under
    TRITON_INTERPRET=1): the list fills while the test runs."""
    names, classes = [], []
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
        classes = [JITFunction, InterpretedFunction]
    except ImportError:  # no Triton: only the reference backend runs, and it launches none
        pass
    for cls in classes:
        def run(self, *args, _run=cls.run, **kwargs):
            if not kwargs.get("warmup"):
                names.append(self.fn.__name__)
            return _run(self, *args, **kwargs)
        monkeypatch.setattr(cls, "run", run)
    return names


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_launch_counts(backend, device, dtype, triton_launches):
    """Launches per nn.CBAM call, pinned (documented in benchmarks/README.md, CBAM section): top-level ops that
    launch a kernel and, on the Triton backend, the Triton kernels. (2, 32, 5, 7) takes the stats pass's
    one-split path, as refnet_f5 (16×2048×11×11) does; the launchers of passes A and B each add one small
    torch sum of their per-block partials, not seen here."""
    torch.manual_seed(0)
    m = CBAM(32).to(device=device, dtype=dtype)
    x = torch.randn((2, 32, 5, 7), device=device, dtype=dtype)
    counted = {}
    with use_backend(backend):
        m.eval()
        with torch.no_grad():
            m(x)  # builds the folded conv
            del triton_launches[:]
            with _Launches() as rec:
                m(x)
        counted["eval"] = (rec.ops, list(triton_launches))
        m.train()
        xg = x.clone().requires_grad_()
        del triton_launches[:]
        with _Launches() as rec:
            out = m(xg)
        counted["train"] = (rec.ops, list(triton_launches))
        g = torch.ones_like(out)
        del triton_launches[:]
        with _Launches() as rec:
            out.backward(g)
        counted["backward"] = (rec.ops, list(triton_launches))
    for phase, (ops, kernels) in counted.items():
        assert len(ops) == LAUNCHES[dtype][phase], f"{phase}: {len(ops)} launches {ops}"
        if backend == "triton":
            assert kernels == TRITON_KERNELS[phase], f"{phase}: Triton kernels {kernels}"
    if backend == "triton":
        from covseg_fast.ops.triton.cbam_tiles import stats_splits
        assert stats_splits(2, 32, 35)[2] == stats_splits(16, 2048, 121)[2] == 1  # the same path as refnet_f5


# ---------------------------------------------------------------- the three backward ops on their own
def op_inputs(shape, seed, dtype=torch.float32, device="cpu", channels_last=False):
    """Arguments of the three ops, with the saved forward quantities computed by the reference ops."""
    gen = generator(seed)
    b, c, h, w = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    ca = torch.rand((b, c), generator=gen, dtype=torch.float64) + 0.1
    sa = torch.rand((b, 1, h, w), generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    gp = torch.randn((b, 2, h, w), generator=gen, dtype=torch.float64)
    gm, gx = torch.randn((b, c), generator=gen), torch.randn((b, c), generator=gen)
    x, ca, sa, g, gp = (t.to(dtype).to(device) for t in (x, ca, sa, g, gp))
    if channels_last:  # g keeps NCHW: the kernels take g's strides separately from x's
        x = x.to(memory_format=torch.channels_last)
    _, mx, scount = reference_call(torch.ops.covseg.cbam_channel_stats, x)
    pooled, pcount = reference_call(torch.ops.covseg.cbam_spatial_pool, x, ca)
    gm, gx = gm.to(mx), gx.to(mx)
    return {"_cbam_apply_backward_reduce": (g, x, ca, sa),
            "_cbam_spatial_pool_backward_reduce": (gp, x, ca, pooled, pcount),
            "_cbam_block_backward_x": (g, x, ca, sa, gp, pooled, pcount, gm, gx, mx, scount)}


REF_FN = {"_cbam_apply_backward_reduce": ref.apply_backward_reduce,
          "_cbam_spatial_pool_backward_reduce": ref.spatial_pool_backward_reduce,
          "_cbam_block_backward_x": ref.block_backward_x}


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 33, 3, 5), (3, 2, 1, 6)], ids=str)
@pytest.mark.parametrize("name", BWD_OPS)
def test_backward_ops_match_reference(backend, device, channels_last, shape, name):
    args = op_inputs(shape, sum(shape), device=device, channels_last=channels_last)[name]
    got = run_backend(backend, getattr(torch.ops.covseg, name), *args)
    assert_same(got, REF_FN[name](*[t.cpu() for t in args]), **OP_TOL, what=name)
    if name == "_cbam_block_backward_x":
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


F32_FLOOR = 4 * ULP[torch.float32]
OP_OUTPUTS = {"_cbam_apply_backward_reduce": (["grad ca", "grad sa"], [F32_FLOOR, F32_FLOOR]),  # fp32 sums
              "_cbam_spatial_pool_backward_reduce": (["grad ca"], [F32_FLOOR]),
              "_cbam_block_backward_x": (["grad x"], None)}                                # in x.dtype


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", BWD_OPS)
def test_backward_ops_low_precision_within_twice_the_reference_error(backend, device, dtype, name):
    """Low-precision g, x, ca, sa, g_pooled (with the fp32 statistics the forward gives for that x): each output
    errs at most twice the reference run on the same arguments, both against the reference on them in float64
    (same arguments, so the same maxima). Floor: an ulp of the dtype the output is stored in, at its scale."""
    args = op_inputs((2, 24, 8, 6), 7, dtype=dtype, device=device)[name]
    gold = REF_FN[name](*[t.double() if t.is_floating_point() else t for t in args])
    names, floors = OP_OUTPUTS[name]
    assert_per_output_bound(run_backend(backend, getattr(torch.ops.covseg, name), *args), REF_FN[name](*args),
                            gold, label=f"{name} {dtype}", rel_floor=floors or ULP[dtype],
                            names=names)


NO_AOT = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("name", BWD_OPS)
def test_opcheck_backward_ops(backend, device, channels_last, name):
    """opcheck on every new op; minus aot_dispatch for Triton under the interpreter (see test_cbam.opcheck)."""
    args = op_inputs((2, 5, 4, 3), 11, device=device, channels_last=channels_last)[name]
    op = getattr(torch.ops.covseg, name).default
    if backend == "triton" and interpreting():
        with use_backend(backend):
            result = torch.library.opcheck(op, tuple(args), test_utils=NO_AOT)
        assert all(v == "SUCCESS" for v in result.values()), result
    else:
        harness_opcheck(op, args, backend=backend)


# ---------------------------------------------------------------- float64: gradcheck and the dispatch
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_float64_reference_backend(training):
    x = make_x((2, 3, 4, 5), 5, dtype=torch.float64).requires_grad_()
    params = [p.requires_grad_() for p in block_params(3, 5, hidden=1, k=3, dtype=torch.float64)]
    stats = [torch.full((1,), 0.2, dtype=torch.float64), torch.full((1,), 1.5, dtype=torch.float64)]

    def f(*a):  # eval: fixed running stats (read only); train: batch statistics, no running stats to update
        return fused_block(*a, stats=None if training else stats, training=training)

    with use_backend("reference"):
        assert torch.autograd.gradcheck(f, (x, *params))


def test_float64_backward_ops_are_served_by_the_reference():
    x64 = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    for name in BWD_OPS:
        assert BACKENDS[name].select("cpu", x64).name == "reference"


# ---------------------------------------------------------------- the block in fp16 / bf16
@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_block_low_precision_within_twice_the_reference_error(backend, device, dtype, channels_last):
    """Whole block forward + backward in bf16/fp16 (fp32 inside the kernels), on the tie-free inputs: the output
    and every gradient, each on its own scale, within twice the reference's error in that dtype."""
    shape = (4, 64, 19, 23) if device == "cuda" else (2, 24, 9, 11)
    inputs = [t.to(device) for t in tie_free_block(shape, 2)]
    if channels_last:
        inputs[0] = inputs[0].to(memory_format=torch.channels_last)

    def grads(fn):
        def run(*a):
            leaves = [t.detach().requires_grad_() for t in a]
            out = fn(*leaves)
            g = (torch.rand(out.shape, generator=generator(0), dtype=torch.float64) + 0.5).to(out)  # g > 0
            return [out, *torch.autograd.grad(out, leaves, g)]
        return run

    fused = lambda *a: run_backend(backend, grads(fused_block), *a)  # noqa: E731
    assert_low_precision_bound(fused, grads(reference_block), inputs, dtype, names=BLOCK_NAMES,
                               rel_floor=[n * ULP[dtype] for n in BLOCK_FLOOR_ULPS])
