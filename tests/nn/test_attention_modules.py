"""PositionAttention / ChannelAttention / APM: fused == reference for the same weights (forward and all
parameter/input gradients, γ included), both channel-attention paths, batch 0, channels_last inputs,
state_dict keys unchanged, and APM at a 128×128 map on CUDA."""
import pytest
import torch

from covseg_fast.nn import APM, ChannelAttention, PositionAttention
from covseg_fast.ops.triton.attention_cost import PATH_ENV
from op_harness import assert_same, backend_cases, cuda_only, generator, run_backend

CASES = backend_cases("position_attention")
ATOL, RTOL = 5e-5, 1e-4


def twin(module_cls, *args, **kwargs):
    """(fused, reference) modules with identical weights; γ perturbed so both terms matter."""
    torch.manual_seed(0)
    fused = module_cls(*args, fused=True, **kwargs)
    ref = module_cls(*args, fused=False, **kwargs)
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():
        for m in (fused, ref):
            for name, p in m.named_parameters():
                if name.endswith("gamma"):
                    p.fill_(0.7)
    return fused, ref


def compare(backend, device, fused, ref, x):
    """Fused and reference modules: same outputs and gradients (x and every parameter); returns the fused outputs."""
    fused, ref = fused.to(device), ref.to(device)
    xf = x.to(device).detach().requires_grad_()
    xr = x.to(device).detach().requires_grad_()

    def loss(m, t):
        out = m(t)
        outs = out if isinstance(out, tuple) else (out,)
        g = generator(1)
        return sum((o * torch.randn(o.shape, generator=g).to(o)).sum() for o in outs), outs

    lf, of = run_backend(backend, loss, fused, xf)
    lr, orf = loss(ref, xr)
    assert_same([o.detach() for o in of], [o.detach() for o in orf], atol=ATOL, rtol=RTOL)
    gf = run_backend(backend, torch.autograd.grad, lf, [xf, *fused.parameters()])
    gr = torch.autograd.grad(lr, [xr, *ref.parameters()])
    assert_same([g.contiguous() for g in gf], [g.contiguous() for g in gr], atol=ATOL, rtol=RTOL, what="grad")
    return of


def feature_map(b, c, h, w, seed=0):
    return torch.relu(torch.randn(b, c, h, w, generator=generator(seed))) * 0.3


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("variant", ["pfnet", "danet"])
def test_position_attention_module(backend, device, variant):
    fused, ref = twin(PositionAttention, 16, variant)
    compare(backend, device, fused, ref, feature_map(2, 16, 5, 7))


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("path", ["gram", "flash"])
@pytest.mark.parametrize("variant", ["pfnet", "danet"])
def test_channel_attention_module(backend, device, path, variant, monkeypatch):
    monkeypatch.setenv(PATH_ENV, path)
    fused, ref = twin(ChannelAttention, 24, variant)
    compare(backend, device, fused, ref, feature_map(2, 24, 11, 11))


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("variant", ["pfnet", "danet"])
def test_apm(backend, device, variant):
    fused, ref = twin(APM, 16, variant)
    compare(backend, device, fused, ref, feature_map(1, 16, 9, 6))


MODULES = [(PositionAttention, (16,)), (ChannelAttention, (16,)), (APM, (16,))]
MODULE_IDS = ["position", "channel", "apm"]


@pytest.mark.parametrize("backend,device", [*CASES, pytest.param("reference", "cpu", id="reference-cpu")])
@pytest.mark.parametrize("module_cls,args", MODULES, ids=MODULE_IDS)
def test_batch_zero(backend, device, module_cls, args):
    """An empty batch in training mode: empty outputs, zero gradients of the right shapes, as the reference."""
    fused, ref = twin(module_cls, *args)
    outs = compare(backend, device, fused.train(), ref.train(), feature_map(0, 16, 5, 6))
    assert [tuple(o.shape) for o in outs] == [(0, 16, 5, 6), (0, 1, 5, 6)][:len(outs)]


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("module_cls,args", MODULES, ids=MODULE_IDS)
def test_channels_last_input(backend, device, module_cls, args):
    """A channels_last map gives the reference's values and gradients; channel attention keeps the layout."""
    fused, ref = twin(module_cls, *args)
    x = feature_map(2, 16, 6, 7).contiguous(memory_format=torch.channels_last)
    outs = compare(backend, device, fused, ref, x)
    if module_cls is ChannelAttention:
        assert outs[0].is_contiguous(memory_format=torch.channels_last)


def test_output_dtype_is_the_input_dtype():
    """An fp32 γ no longer promotes a bf16 map: γ·out + x is rounded once to x's dtype (both paths)."""
    x = feature_map(1, 8, 4, 4).bfloat16()
    for fused in (True, False):
        assert ChannelAttention(8, fused=fused)(x).dtype == torch.bfloat16


def test_default_cpu_path_and_state_dict_keys():
    fused, ref = twin(APM, 16)
    keys = sorted(fused.state_dict())
    assert keys == sorted(ref.state_dict()) == [
        "cab.gamma", "map.bias", "map.weight", "sab.gamma", "sab.key_conv.bias", "sab.key_conv.weight",
        "sab.query_conv.bias", "sab.query_conv.weight", "sab.value_conv.bias", "sab.value_conv.weight",
    ]
    compare(None, "cpu", fused, ref, feature_map(2, 16, 6, 6))


def test_gamma_init_per_variant():
    assert PositionAttention(16).gamma.item() == 1.0 and ChannelAttention(16, "danet").gamma.item() == 0.0
    with pytest.raises(ValueError, match="'pfnet' or 'danet'"):
        ChannelAttention(16, "other")


@pytest.mark.cuda
@cuda_only
def test_apm_at_128x128_fits_cuda():
    """N = 16384: the eager PAM would keep ≥ 2 GiB of fp32 N×N matrices per image for backward."""
    torch.manual_seed(0)
    apm = APM(64).cuda()
    x = feature_map(2, 64, 128, 128).cuda().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        feats, logits = apm(x)
    (feats.float().mean() + logits.float().mean()).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert torch.isfinite(x.grad).all()
    assert peak < 512 * 2**20, f"peak {peak / 2**20:.0f} MiB"
