"""nn.CBAM: the fused path (fused=True) against the reference composition (fused=False, nn.BatchNorm2d).

fp32 tolerance atol = rtol = 1e-4 (fp32 summation order only; BN divides by a batch std).
"""
import copy

import pytest
import torch

from covseg_fast.nn import CBAM
from op_harness import assert_same, backend_cases, generator, run_backend

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
