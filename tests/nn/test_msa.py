"""MSA module: the fused strip-conv path equals the reference path for the same weights."""
import pytest
import torch

from covseg_fast.nn import MSA, StripConv
from covseg_fast.ops.strip_conv import BACKENDS
from covseg_fast.ops.triton import interpreting


def _pair(channels, **kw):
    torch.manual_seed(0)
    fused = MSA(channels, fused=True, **kw)
    plain = MSA(channels, fused=False, **kw)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def _fwd_bwd(module, x):
    x = x.clone().requires_grad_(True)
    out = module(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def _assert_match(fused, plain, x, tol):
    out_f, gx_f, gp_f = _fwd_bwd(fused, x)
    out_p, gx_p, gp_p = _fwd_bwd(plain, x)
    torch.testing.assert_close(out_f, out_p, rtol=tol, atol=tol)
    torch.testing.assert_close(gx_f, gx_p, rtol=tol, atol=tol)
    assert gp_f.keys() == gp_p.keys()
    for name in gp_f:
        scale = gp_p[name].abs().max().item()
        torch.testing.assert_close(gp_f[name], gp_p[name], rtol=tol, atol=tol * max(scale, 1.0), msg=name)


def test_fused_equals_reference_cpu():
    fused, plain = _pair(8, reduction=4)
    x = torch.randn(2, 8, 13, 11, generator=torch.Generator().manual_seed(2))
    _assert_match(fused, plain, x, 1e-5)


@pytest.mark.triton
@pytest.mark.skipif(not interpreting(), reason="the Triton strip conv runs on CPU only under TRITON_INTERPRET=1")
def test_fused_equals_reference_triton_interpreter():
    fused, plain = _pair(4, reduction=2)
    x = torch.randn(1, 4, 9, 10, generator=torch.Generator().manual_seed(3))
    assert BACKENDS.select("cpu", x).name == "triton"
    _assert_match(fused, plain, x, 1e-5)


def test_strip_conv_custom_kernels_and_state_dict_keys():
    m = StripConv(3, square_kernel=3, strip_kernels=(5, 9))
    assert set(m.state_dict()) == {"conv0.weight", "conv0.bias", "conv0_1.weight", "conv0_1.bias", "conv0_2.weight",
                                   "conv0_2.bias", "conv1_1.weight", "conv1_1.bias", "conv1_2.weight", "conv1_2.bias"}
    x = torch.randn(1, 3, 8, 7)
    ref = StripConv(3, square_kernel=3, strip_kernels=(5, 9), fused=False)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


def test_parameter_count_at_1024():
    assert sum(p.numel() for p in MSA(1024).parameters()) == 1_294_500


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="odd and positive"):
        StripConv(4, strip_kernels=(7, 10))


@pytest.mark.triton  # also runs the Triton path under TRITON_INTERPRET=1
def test_fused_under_cpu_autocast_matches_reference():
    fused, plain = _pair(4, reduction=2)
    x = torch.randn(1, 4, 9, 8, generator=torch.Generator().manual_seed(4))
    # float16: the Triton interpreter truncates fp32 → bf16 on store (no round-to-nearest), so bf16 is
    # checked on CUDA only.
    with torch.autocast("cpu", dtype=torch.float16):
        out_f, out_p = fused.strip(x), plain.strip(x)
    assert out_f.dtype == out_p.dtype == torch.float16
    gold = plain.strip(x)  # fp32
    err_f, err_p = (out_f.float() - gold).abs().max().item(), (out_p.float() - gold).abs().max().item()
    # the Triton path (under the interpreter) accumulates in fp32: held to 2× the fp16 reference's error
    assert err_f <= 2 * err_p + 1e-3, (err_f, err_p)
