"""MSA module: fused path == reference path for the same (randomised) weights; options (a)/(b); init; counts.

Fused vs reference, fp32: outputs and input gradients within 1e-5 abs/rel, parameter gradients within 1e-5 of
each gradient's max (fp32 summation order only; measured under TRITON_INTERPRET=1: ≤ 3.1e-6 abs on outputs up to
11, ≤ 6.5e-7 relative on parameter gradients; TF32 is switched off for the CUDA case). Every bias is randomised,
and so are the CBAM spatial BN γ, β and running statistics, so the spatial gate really varies (its default
γ = 0 makes it a constant 0.5).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from covseg_fast.nn import MSA, StripConv
from covseg_fast.ops import cbam as cbam_ops
from covseg_fast.ops.strip_conv import BACKENDS as STRIP_BACKENDS
from op_harness import backend_cases, generator, run_backend

TOL = 1e-5
CASES = [pytest.param("reference", "cpu", id="reference-cpu"), *backend_cases("strip_conv")]
OPTIONS = [pytest.param({}, id="paper"),
           pytest.param({"wrapper": "segnext", "post_norm": True}, id="segnext+post_norm")]


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values for every bias, BN affine parameter and BN running statistic (weights keep their init)."""
    gen = generator(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return module


def make_pair(channels, seed=0, **kw):
    """(fused, reference) MSA modules with identical randomised weights and BN statistics."""
    torch.manual_seed(seed)
    plain = randomise(MSA(channels, fused=False, **kw), seed + 100)
    fused = copy.deepcopy(plain)
    for m in fused.modules():
        if hasattr(m, "fused"):
            m.fused = True
    return fused, plain


def fwd_bwd(module, x, seed=1):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.backward(torch.randn(out.shape, generator=generator(seed)).to(x.device))
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("backend,device", CASES)
def test_fused_equals_reference(backend, device, mode, channels_last, options, monkeypatch):
    """fp32; under TRITON_INTERPRET=1 the triton-cpu case runs the Triton strip-conv and CBAM kernels."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # CUDA: the 1×1 and 7×7 convs in true fp32
    fused, plain = make_pair(6, reduction=2, **options)
    x = torch.randn(2, 6, 9, 11, generator=generator(2))
    if backend == "triton":
        assert STRIP_BACKENDS.select(device, x.to(device)).name == "triton"
        assert cbam_ops.BACKENDS["cbam_apply"].select(device, x.to(device)).name == "triton"
    fused.to(device).train(mode == "train")
    plain.train(mode == "train")
    x_fused = x.to(device)
    if channels_last:  # the whole module and its input, as model.to(memory_format=torch.channels_last) does
        fused.to(memory_format=torch.channels_last)
        x_fused = x_fused.contiguous(memory_format=torch.channels_last)
    out_f, gx_f, gp_f = run_backend(backend, fwd_bwd, fused, x_fused)
    out_p, gx_p, gp_p = run_backend("reference", fwd_bwd, plain, x)
    torch.testing.assert_close(out_f.cpu(), out_p, rtol=TOL, atol=TOL)
    torch.testing.assert_close(gx_f.cpu(), gx_p, rtol=TOL, atol=TOL)
    assert gp_f.keys() == gp_p.keys()
    for name in gp_f:
        scale = gp_p[name].abs().max().item()
        torch.testing.assert_close(gp_f[name].cpu(), gp_p[name], rtol=TOL, atol=TOL * max(scale, 1.0), msg=name)
    for (name, b_f), (_, b_p) in zip(fused.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(b_f.cpu(), b_p, rtol=TOL, atol=TOL, msg=name)  # BN running stats alike


def test_randomised_spatial_gate_is_not_constant():
    """Guards the test above: with the randomised spatial BN the CBAM spatial gate varies over pixels."""
    _, plain = make_pair(6, reduction=2)
    sg = plain.cbam.spatial_gate
    assert sg.bn.weight.item() != 0.0
    x = torch.randn(2, 6, 9, 11, generator=generator(2))
    with torch.no_grad():
        m = plain.cbam.channel_gate(plain.proj(plain.strip(x)))
        pooled = torch.cat([m.amax(1, keepdim=True), m.mean(1, keepdim=True)], 1)
        gate = torch.sigmoid(sg.bn.eval()(sg.conv(pooled)))
    assert gate.std().item() > 0.05


def test_segnext_wrapper_is_option_a():
    """wrapper="segnext": out = x + proj_2(core(u) − u), u = GELU(proj_1(BN(x))), core = the paper's module."""
    torch.manual_seed(3)
    msa = randomise(MSA(8, reduction=2, fused=False, wrapper="segnext"), 4).eval()
    core = MSA(8, reduction=2, fused=False).eval()
    core.load_state_dict({k: v for k, v in msa.state_dict().items() if k.split(".")[0] in ("strip", "proj", "cbam")})
    x = torch.randn(2, 8, 10, 9, generator=generator(5))
    with torch.no_grad():
        bn = msa.norm
        u = F.gelu(F.conv2d(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps),
                            msa.proj_1.weight, msa.proj_1.bias))
        expected = x + F.conv2d(core(u) - u, msa.proj_2.weight, msa.proj_2.bias)
        torch.testing.assert_close(msa(x), expected, rtol=1e-5, atol=1e-5)
        assert (msa(x) - core(x)).abs().max() > 1e-2  # the option really changes the module


def test_post_norm_is_option_b():
    torch.manual_seed(6)
    msa = randomise(MSA(8, reduction=2, fused=False, post_norm=True), 7).eval()
    core = MSA(8, reduction=2, fused=False).eval()
    core.load_state_dict({k: v for k, v in msa.state_dict().items() if not k.startswith("post_bn.")})
    x = torch.randn(2, 8, 10, 9, generator=generator(8))
    bn = msa.post_bn
    with torch.no_grad():
        expected = F.relu(F.batch_norm(core(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
        torch.testing.assert_close(msa(x), expected, rtol=1e-5, atol=1e-5)
        assert (msa(x) >= 0).all() and (core(x) < 0).any()


@pytest.mark.parametrize("options,extra", [({}, 0), ({"wrapper": "segnext"}, lambda c: 2 * c * c + 4 * c),
                                           ({"post_norm": True}, lambda c: 2 * c)])
def test_parameter_counts_at_1024(options, extra):
    """MODELS.md §3.2: 25C + 78C + 7C + C² + C + CBAM(2·C·⌊C/16⌋ + ⌊C/16⌋ + C + 98 + 2), 1,294,500 at C = 1024.

    Option (a) adds 2C² + 4C (proj_1, proj_2, BN), option (b) 2C (BN)."""
    c = 1024
    base = 25 * c + 78 * c + 7 * c + c * c + c + 2 * c * (c // 16) + c // 16 + c + 98 + 2
    assert base == 1_294_500
    assert sum(p.numel() for p in MSA(c, **options).parameters()) == base + (extra(c) if extra else 0)


def test_default_state_dict_keys_unchanged():
    """The options add modules only when on: default checkpoints keep their keys."""
    keys = set(MSA(16).state_dict())
    assert not any(k.split(".")[0] in ("norm", "proj_1", "proj_2", "post_bn") for k in keys)
    assert {"norm.weight", "proj_1.weight", "proj_2.bias", "post_bn.running_var"} <= set(
        MSA(16, wrapper="segnext", post_norm=True).state_dict())


def test_one_by_one_convs_get_segnext_init():
    """MSCAN.init_weights (SegNeXt@c87bcae mscan.py): N(0, √(2/fan_out)), fan_out = C for a 1×1 conv; bias 0."""
    torch.manual_seed(9)
    c = 256
    msa = MSA(c, wrapper="segnext")
    for conv in (msa.proj, msa.proj_1, msa.proj_2):
        assert conv.bias.abs().max().item() == 0.0
        assert abs(conv.weight.std().item() / (2.0 / c) ** 0.5 - 1) < 0.02
    assert abs(msa.strip.conv2_1.weight.std().item() / (2.0 / 21) ** 0.5 - 1) < 0.05  # depthwise 1×21: fan_out 21


def test_cbam_zero_spatial_bn_switch():
    assert MSA(16).cbam.spatial_gate.bn.weight.item() == 0.0  # MODELS.md §2.6 default
    assert MSA(16, zero_spatial_bn=False).cbam.spatial_gate.bn.weight.item() == 1.0


def test_custom_kernels():
    msa = MSA(4, square_kernel=3, strip_kernels=(5, 9), reduction=2)
    assert msa.strip.conv0.kernel_size == (3, 3) and msa.strip.conv1_2.kernel_size == (9, 1)
    assert not hasattr(msa.strip, "conv2_1")
    assert msa(torch.randn(1, 4, 8, 7)).shape == (1, 4, 8, 7)


def test_strip_conv_custom_kernels_and_state_dict_keys():
    m = StripConv(3, square_kernel=3, strip_kernels=(5, 9))
    assert set(m.state_dict()) == {"conv0.weight", "conv0.bias", "conv0_1.weight", "conv0_1.bias", "conv0_2.weight",
                                   "conv0_2.bias", "conv1_1.weight", "conv1_1.bias", "conv1_2.weight", "conv1_2.bias"}
    x = torch.randn(1, 3, 8, 7)
    ref = StripConv(3, square_kernel=3, strip_kernels=(5, 9), fused=False)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="odd and positive"):
        StripConv(4, strip_kernels=(7, 10))
    with pytest.raises(ValueError, match="odd and positive"):
        MSA(4, square_kernel=4)
    with pytest.raises(ValueError, match=r"wrapper must be one of \('none', 'segnext'\), got 'vit'"):
        MSA(4, wrapper="vit")


@pytest.mark.triton  # also runs the Triton path under TRITON_INTERPRET=1
def test_fused_under_cpu_autocast_matches_reference():
    fused, plain = make_pair(4, reduction=2)
    x = torch.randn(1, 4, 9, 8, generator=generator(4))
    # float16: the Triton interpreter truncates fp32 → bf16 on store (no round-to-nearest), so bf16 is
    # checked on CUDA only.
    with torch.autocast("cpu", dtype=torch.float16):
        out_f, out_p = fused.strip(x), plain.strip(x)
    assert out_f.dtype == out_p.dtype == torch.float16
    gold = plain.strip(x)  # fp32
    err_f, err_p = (out_f.float() - gold).abs().max().item(), (out_p.float() - gold).abs().max().item()
    # the Triton path (under the interpreter) accumulates in fp32: held to 2× the fp16 reference's error
    assert err_f <= 2 * err_p + 1e-3, (err_f, err_p)
