"""nn.CBAM: the fused path (fused=True) against the reference composition (fused=False, nn.BatchNorm2d).

fp32 tolerance atol = rtol = 1e-4 (fp32 summation order only; BN divides by a batch std).
"""
import copy

import pytest
import torch

from covseg_fast.nn import CBAM
from cbam_inputs import BLOCK_FLOOR_ULPS, BLOCK_NAMES, ULP, tie_free_block
from op_harness import assert_per_output_bound, assert_same, backend_cases, generator, run_backend

CASES = [*backend_cases("cbam_apply"), pytest.param("reference", "cpu", id="reference-cpu")]
TOL = dict(atol=1e-4, rtol=1e-4)
KEYS = ["channel_gate.mlp.0.weight", "channel_gate.mlp.0.bias", "channel_gate.mlp.2.weight",
        "channel_gate.mlp.2.bias", "spatial_gate.conv.weight", "spatial_gate.bn.weight", "spatial_gate.bn.bias",
        "spatial_gate.bn.running_mean", "spatial_gate.bn.running_var", "spatial_gate.bn.num_batches_tracked"]


def pair(channels, seed, device="cpu", reduction=4):
    """(fused, reference) modules with identical, non-trivial weights (spatial BN γ ≠ 0)."""
    torch.manual_seed(seed)
    ref = CBAM(channels, reduction=reduction, zero_spatial_bn=False, fused=False)
    with torch.no_grad():
        ref.spatial_gate.bn.weight.fill_(1.3)
        ref.spatial_gate.bn.bias.fill_(0.2)
        for m in ref.channel_gate.mlp:
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0, 0.1)
    fused = copy.deepcopy(ref)
    fused.fused = True
    return fused.to(device), ref.to(device)


def inputs(shape, seed, device="cpu"):
    return torch.randn(shape, generator=generator(seed)).to(device)


def test_state_dict_keys_are_the_contract():
    fused, ref = pair(32, 0)
    assert list(fused.state_dict()) == KEYS
    assert list(ref.state_dict()) == KEYS
    assert CBAM(32).spatial_gate.bn.weight.item() == 0.0  # default init: spatial gate starts at 0.5


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("momentum", [0.01, None], ids=["momentum", "cumulative"])
def test_training_steps_match_batchnorm_reference(backend, device, momentum):
    """Several SGD steps in train mode: outputs, every parameter gradient and BN running stats agree.

    momentum=None: nn.BatchNorm2d's cumulative average (factor 1/num_batches_tracked), still the module's own.
    """
    fused, ref = pair(12, 1, device)
    fused.spatial_gate.bn.momentum = ref.spatial_gate.bn.momentum = momentum
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.1)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(3):
        x = inputs((3, 12, 7, 9), step, device)
        target = inputs((3, 12, 7, 9), 100 + step, device)
        losses = []
        for model, opt in ((fused, opt_f), (ref, opt_r)):
            opt.zero_grad()
            xin = x.clone().requires_grad_()
            out = run_backend(backend, model, xin)
            loss = ((out - target) ** 2).mean()
            loss.backward()
            losses.append((out.detach(), xin.grad, {n: p.grad.clone() for n, p in model.named_parameters()}))
            opt.step()
        (of, gxf, gf), (orf, gxr, gr) = losses
        assert_same(of, orf, **TOL, what=f"step {step} output")
        assert_same(gxf, gxr, **TOL, what=f"step {step} grad x")
        for name in gr:
            assert_same(gf[name], gr[name], **TOL, what=f"step {step} grad {name}")
    bn_f, bn_r = fused.spatial_gate.bn, ref.spatial_gate.bn
    assert_same(bn_f.running_mean, bn_r.running_mean, **TOL, what="running_mean")
    assert_same(bn_f.running_var, bn_r.running_var, **TOL, what="running_var")
    assert int(bn_f.num_batches_tracked) == int(bn_r.num_batches_tracked) == 3
    assert bn_f.running_var.item() != 1.0  # the stats really moved


@pytest.mark.parametrize("backend,device", CASES)
def test_eval_uses_running_stats_and_does_not_update_them(backend, device):
    fused, ref = pair(8, 2, device)
    with torch.no_grad():
        for m in (fused, ref):
            m.spatial_gate.bn.running_mean.fill_(0.3)
            m.spatial_gate.bn.running_var.fill_(2.5)
    fused.eval(), ref.eval()
    x = inputs((2, 8, 6, 5), 3, device)
    out = run_backend(backend, fused, x)
    assert_same(out, ref(x), **TOL)
    assert fused.spatial_gate.bn.running_mean.item() == pytest.approx(0.3)
    assert int(fused.spatial_gate.bn.num_batches_tracked) == 0
    fused.train()
    assert not torch.allclose(run_backend(backend, fused, x), out, atol=1e-3)  # train mode: batch statistics


@pytest.mark.parametrize("backend,device", CASES)
def test_batch_one_train_and_batch_zero_eval(backend, device):
    fused, ref = pair(5, 3, device, reduction=16)  # hidden = max(1, 5 // 16) = 1
    assert fused.channel_gate.mlp[0].out_features == 1
    x = inputs((1, 5, 9, 7), 4, device)
    assert_same(run_backend(backend, fused, x), ref(x), **TOL)
    assert_same(fused.spatial_gate.bn.running_var, ref.spatial_gate.bn.running_var, **TOL)
    fused.eval(), ref.eval()
    empty = torch.zeros((0, 5, 9, 7), device=device)
    assert tuple(run_backend(backend, fused, empty).shape) == (0, 5, 9, 7)


@pytest.mark.parametrize("backend,device", CASES)
def test_batch_zero_train_matches_reference(backend, device):
    """Training with an empty batch: empty output, zero gradients, BatchNorm state as the reference module's."""
    fused, ref = pair(5, 8, device, reduction=2)
    grads = []
    for model, be in ((fused, backend), (ref, "reference")):
        x = torch.zeros((0, 5, 4, 3), device=device, requires_grad=True)
        out = run_backend(be, model, x)
        assert tuple(out.shape) == (0, 5, 4, 3)
        run_backend(be, out.sum().backward)
        grads.append([x.grad, *(p.grad for p in model.parameters())])
    assert_same(grads[0], grads[1], what="grads")
    assert all(int(g.count_nonzero()) == 0 for g in grads[0])
    assert_same(list(fused.spatial_gate.bn.buffers()), list(ref.spatial_gate.bn.buffers()), what="BN buffers")


@pytest.mark.parametrize("backend,device", CASES)
def test_channels_last_in_channels_last_out(backend, device):
    fused, ref = pair(16, 4, device)
    x = inputs((2, 16, 5, 7), 5, device).to(memory_format=torch.channels_last).requires_grad_()
    out = run_backend(backend, fused, x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_same(out, ref(x), **TOL)
    (gf,) = torch.autograd.grad(run_backend(backend, fused, x).sum(), x)
    (gr,) = torch.autograd.grad(ref(x).sum(), x)
    assert_same(gf, gr, **TOL, what="grad x")


@pytest.mark.compile
def test_torch_compile_module_train_step():
    fused, ref = pair(8, 5)
    compiled = torch.compile(fused, fullgraph=True)
    for step in range(2):
        x = inputs((2, 8, 6, 6), 10 + step).requires_grad_()
        out, out_ref = compiled(x), ref(x)
        assert_same(out, out_ref, **TOL)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        (gr,) = torch.autograd.grad(out_ref.square().sum(), x)
        assert_same(g, gr, **TOL, what="grad x")
    assert int(fused.spatial_gate.bn.num_batches_tracked) == 2
    assert_same(fused.spatial_gate.bn.running_var, ref.spatial_gate.bn.running_var, **TOL, what="running_var")
    assert_same(fused.spatial_gate.bn.running_mean, ref.spatial_gate.bn.running_mean, **TOL, what="running_mean")


@pytest.mark.compile
def test_torch_compile_module_eval_folds():
    """Eval under torch.compile (fullgraph): the fold is traced (no cache), output and grads as the reference."""
    fused, ref = pair(8, 6)
    fused.eval(), ref.eval()
    compiled = torch.compile(fused, fullgraph=True)
    x = inputs((2, 8, 6, 6), 21).requires_grad_()
    out, out_ref = compiled(x), ref(x)
    assert_same(out, out_ref, **TOL)
    assert_same(torch.autograd.grad(out.sum(), x), torch.autograd.grad(out_ref.sum(), x), **TOL, what="grad x")
    with torch.no_grad():
        assert_same(compiled(x), out_ref, **TOL, what="no grad")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_reference_module_is_the_functional_spec(training):
    from covseg_fast.ops.reference.cbam import cbam as spec

    _, ref = pair(10, 6)
    ref.train(training)
    x = inputs((2, 10, 6, 7), 7)
    fc1, fc2, sg = ref.channel_gate.mlp[0], ref.channel_gate.mlp[2], ref.spatial_gate
    rm, rv = sg.bn.running_mean.clone(), sg.bn.running_var.clone()
    want = spec(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, sg.conv.weight, sg.bn.weight, sg.bn.bias, rm, rv,
                training=training, momentum=0.01, eps=1e-5)
    assert_same(ref(x), want, atol=1e-6, rtol=1e-6)
    assert_same([sg.bn.running_mean, sg.bn.running_var], [rm, rv], atol=1e-7, rtol=1e-7, what="running stats")


@pytest.mark.parametrize("backend,device", CASES)
def test_fused_path_saves_no_full_size_intermediate(backend, device):
    """Every full-size tensor autograd keeps for backward is x itself (x·ca and x·ca·sa are never stored)."""
    fused, _ = pair(16, 7, device)
    x = inputs((2, 16, 6, 5), 8, device).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        run_backend(backend, fused, x)
    full = [t for t in saved if t.numel() == x.numel()]
    assert full and all(t.data_ptr() == x.data_ptr() for t in full), [tuple(t.shape) for t in full]


# ---------------------------------------------------------------- eval: BatchNorm folded into the conv
def _no_batch_norm_ops(fn, *args):
    """(result, names of the BatchNorm ops dispatched while running fn)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Rec(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bn = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "batch_norm" in func.overloadpacket.__name__:
                self.bn.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Rec() as rec:
        out = fn(*args)
    return out, rec.bn


@pytest.mark.parametrize("backend,device", CASES)
def test_eval_folds_batchnorm_into_conv(backend, device):
    """Eval: no BatchNorm op runs; output and every gradient (x, conv weight, γ, β, MLP) equal the unfolded
    reference's; the running statistics are untouched. Inference (no grad) reuses the cached fold."""
    fused, ref = pair(12, 9, device)
    with torch.no_grad():
        for m in (fused, ref):
            m.spatial_gate.bn.running_mean.fill_(0.4)
            m.spatial_gate.bn.running_var.fill_(3.0)
    fused.eval(), ref.eval()
    x = inputs((2, 12, 7, 6), 11, device).requires_grad_()
    out, bn_ops = _no_batch_norm_ops(run_backend, backend, fused, x)
    assert bn_ops == []
    out_r = ref(x)
    assert_same(out, out_r, atol=1e-5, rtol=1e-5)
    g = inputs(out.shape, 12, device)
    params = [x, *fused.parameters()]
    got = run_backend(backend, torch.autograd.grad, out, params, g)
    want = torch.autograd.grad(out_r, [x, *ref.parameters()], g)
    names = ["x"] + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert_same(a, b, atol=1e-5, rtol=1e-5, what=f"eval grad {name}")
    with torch.no_grad():
        first = run_backend(backend, fused, x)
        cached = fused._fold_cache[2]
        assert_same(run_backend(backend, fused, x), first)
        assert fused._fold_cache[2] is cached  # the fold was reused, not rebuilt
    assert copy.deepcopy(fused)._fold_cache is None  # a copy's storages differ: it builds its own fold
    bn = fused.spatial_gate.bn
    assert (bn.running_mean.item(), bn.running_var.item(), int(bn.num_batches_tracked)) == (
        pytest.approx(0.4), pytest.approx(3.0), 0)


@pytest.mark.parametrize("backend,device", CASES)
def test_fold_follows_training_steps_and_loaded_weights(backend, device):
    """Train steps (batch statistics, running stats updated as nn.BatchNorm2d) alternating with no-grad eval
    calls: the cached fold is rebuilt whenever the conv weight, γ, β or the running stats change, including a
    load_state_dict while in eval."""
    fused, ref = pair(10, 13, device)
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.2)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.2)
    x_eval = inputs((2, 10, 6, 5), 20, device)
    for step in range(3):
        for m, opt in ((fused, opt_f), (ref, opt_r)):
            m.train()
            opt.zero_grad()
            out = run_backend(backend, m, inputs((3, 10, 6, 5), 30 + step, device))
            out.square().mean().backward()
            opt.step()
        assert_same(fused.spatial_gate.bn.running_var, ref.spatial_gate.bn.running_var, **TOL, what="running_var")
        assert_same(fused.spatial_gate.bn.running_mean, ref.spatial_gate.bn.running_mean, **TOL,
                    what="running_mean")
        fused.eval(), ref.eval()
        with torch.no_grad():
            assert_same(run_backend(backend, fused, x_eval), ref(x_eval), **TOL, what=f"eval after step {step}")
            run_backend(backend, fused, x_eval)  # cached
    state = pair(10, 14, device)[1].state_dict()
    fused.load_state_dict(state), ref.load_state_dict(state)  # in eval, with a cached fold
    with torch.no_grad():
        assert_same(run_backend(backend, fused, x_eval), ref(x_eval), **TOL, what="eval after load_state_dict")


def test_export_traces_the_fold():
    """torch.export in eval without grad records the fold as ops on the parameters and running statistics (the
    program follows its state dict), not a cached constant."""
    fused, _ = pair(8, 17)
    fused.eval()
    x = inputs((2, 8, 5, 5), 18)
    with torch.no_grad():
        ep = run_backend("reference", torch.export.export, fused, (x,))
        assert fused._fold_cache is None
        assert any(n.target == torch.ops.aten.rsqrt.default for n in ep.graph.nodes)
        assert_same(run_backend("reference", ep.module(), x), run_backend("reference", fused, x), **TOL)


def test_eval_without_running_stats_uses_batch_statistics():
    """track_running_stats=False: BatchNorm normalises with batch statistics in eval too, so nothing is folded."""
    fused, ref = pair(6, 15)
    for m in (fused, ref):
        m.spatial_gate.bn = torch.nn.BatchNorm2d(1, track_running_stats=False)
        m.eval()
    x = inputs((2, 6, 5, 5), 16)
    out, bn_ops = _no_batch_norm_ops(fused, x)
    assert bn_ops  # the module's BatchNorm ran
    assert_same(out, ref(x), **TOL)


# ---------------------------------------------------------------- autocast
@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autocast_bf16_within_twice_the_reference_error(backend, device, x_dtype):
    """bf16 autocast (MLP and conv in bf16; fp32 weights, x in fp32 or already bf16 as after an autocast conv)
    in training: the fused module vs the reference module under the same autocast, both against the reference
    module in float64; output and every gradient on its own scale; inputs and weights from the tie-free
    construction of the low-precision block test. The running statistics follow the reference's."""
    x, w1, b1, w2, b2, conv, gamma, beta = (t.to(device) for t in tie_free_block((2, 24, 9, 11), 5))
    ref = CBAM(24, reduction=6, zero_spatial_bn=False, fused=False).to(device)
    with torch.no_grad():
        for p, v in zip((ref.channel_gate.mlp[0].weight, ref.channel_gate.mlp[0].bias, ref.channel_gate.mlp[2].weight,
                         ref.channel_gate.mlp[2].bias, ref.spatial_gate.conv.weight, ref.spatial_gate.bn.weight,
                         ref.spatial_gate.bn.bias), (w1, b1, w2, b2, conv, gamma, beta)):
            p.copy_(v)
    ref.spatial_gate.bn.momentum = 1.0  # running stats = this batch's, so the comparison below means something
    fused = copy.deepcopy(ref)
    fused.fused = True
    gold_model = copy.deepcopy(ref).double()
    g = (torch.rand(x.shape, generator=generator(1), dtype=torch.float64) + 0.5).to(device)  # g > 0, as there

    def run(model, dtype, autocast, be="reference"):
        xin = x.to(dtype).requires_grad_()  # x is exact in bf16
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = run_backend(be, model, xin)
        grads = run_backend(be, torch.autograd.grad, out, [xin, *model.parameters()], g.to(out.dtype))
        return [out, *grads]

    gold = run(gold_model, torch.float64, False)
    want = run(ref, x_dtype, True)
    got = run(fused, x_dtype, True, backend)
    assert got[0].dtype == want[0].dtype
    assert_per_output_bound(got, want, gold, label=f"autocast {backend} {x_dtype}", names=BLOCK_NAMES,
                            rel_floor=[n * ULP[torch.bfloat16] for n in BLOCK_FLOOR_ULPS])
    for name in ("running_mean", "running_var"):  # statistics of bf16 conv outputs: within half a bf16 ulp
        assert_same(getattr(fused.spatial_gate.bn, name), getattr(ref.spatial_gate.bn, name), atol=4e-3, rtol=4e-3,
                    what=f"{backend} {name}")
