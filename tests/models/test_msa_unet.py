"""MSA-UNet: parameter counts, shapes, ablation switches, input sizes, registry, fused == reference, export, overfit."""
import os

import pytest
import torch

from covseg_fast.models import MSAUNet, get_criterion, get_model, get_spec, load_model, prepare_input, save_checkpoint
from covseg_fast.models.msa_unet import AuxHead
from covseg_fast.nn import MSA
from covseg_fast.ops import use_backend
from model_harness import load_real_slices, n_params, outputs_and_grads
from op_harness import cuda_only

torch.manual_seed(0)


@pytest.mark.parametrize("base,expected", [(8, 442_991), (16, 1_658_805), (32, 6_411_329), (64, 25_199_961)])
def test_parameter_counts_match_docstring(base, expected):
    assert n_params(MSAUNet(base=base)) == expected
    assert f"{expected:,}" in MSAUNet.__doc__


def test_one_msa_at_1024_is_about_1_29m_params():
    assert abs(n_params(MSA(1024)) - 1.29e6) < 0.01e6  # MODELS.md §3.2


def test_output_shapes_train_and_eval_at_256():
    model = MSAUNet(base=4)
    x = torch.randn(1, 3, 256, 256)
    out = model.train()(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (1, 1, 256, 256)
    assert [tuple(a.shape) for a in out["aux"]] == [(1, 2, 128, 128), (1, 2, 64, 64), (1, 2, 32, 32), (1, 2, 16, 16)]
    with torch.no_grad():
        logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 1, 256, 256)


def test_multiclass_and_one_channel_input():
    model = MSAUNet(in_channels=1, num_classes=3, base=4).train()
    out = model(torch.randn(2, 1, 32, 48))
    assert out["out"].shape == (2, 3, 32, 48)
    assert [tuple(a.shape) for a in out["aux"]] == [(2, 3, 16, 24), (2, 3, 8, 12), (2, 3, 4, 6), (2, 3, 2, 3)]
    labels = torch.randint(0, 3, (2, 32, 48))
    loss, parts = get_criterion("msa_unet", num_classes=3)(out, {"mask": (labels > 0).float()[:, None],
                                                                "labels": labels})
    loss.backward()
    assert torch.isfinite(loss) and parts["aux"] > 0 and {"aux1", "aux4"} <= set(parts)


def test_ablation_switches():
    full = MSAUNet(base=8)
    no_msa = MSAUNet(base=8, msa=False)
    no_aux = MSAUNet(base=8, aux=False)
    pooled = MSAUNet(base=8, strided=False)
    assert not any(isinstance(m, MSA) for m in no_msa.modules())
    assert sum(isinstance(m, MSA) for m in full.modules()) == 8
    assert no_aux.aux_heads is None and n_params(full) - n_params(no_aux) == sum(n_params(h) for h in full.aux_heads)
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in pooled.modules())
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in full.modules())
    assert all(d[0].stride == (2, 2) for d in full.downs)
    x = torch.randn(2, 3, 32, 32)
    for model in (no_msa, no_aux, pooled, MSAUNet(base=8, bilinear=True)):
        out = model.train()(x)
        assert out["out"].shape == (2, 1, 32, 32)
        assert len(out["aux"]) == (0 if model is no_aux else 4)
    loss, parts = get_criterion("msa_unet")(no_aux(x), {"mask": (x[:, :1] > 0).float()})
    assert "aux" not in parts and torch.isfinite(loss)


def _widths(base):
    return [base * m for m in (1, 2, 4, 8, 16)]


def test_down_kernel_option():
    """§3.1/§11 A3: 3×3/s2/p1 (default) or 2×2/s2/p0; 5·c_k·c_(k+1) fewer weights per downsampling with 2×2."""
    k3, k2 = MSAUNet(base=8), MSAUNet(base=8, down_kernel=2)
    for d3, d2 in zip(k3.downs, k2.downs):
        assert (d3[0].kernel_size, d3[0].stride, d3[0].padding) == ((3, 3), (2, 2), (1, 1))
        assert (d2[0].kernel_size, d2[0].stride, d2[0].padding) == ((2, 2), (2, 2), (0, 0))
    c = _widths(8)
    assert n_params(k3) - n_params(k2) == sum(5 * c[k] * c[k + 1] for k in range(4))
    out = k2.train()(torch.randn(2, 3, 32, 32))
    assert out["out"].shape == (2, 1, 32, 32)
    assert [tuple(a.shape) for a in out["aux"]] == [(2, 2, 16, 16), (2, 2, 8, 8), (2, 2, 4, 4), (2, 2, 2, 2)]
    with pytest.raises(ValueError, match="down_kernel must be 3 .* or 2 .*, got 5"):
        MSAUNet(base=4, down_kernel=5)
    with pytest.raises(ValueError, match="down_kernel=2 needs strided=True"):
        MSAUNet(base=4, down_kernel=2, strided=False)


def test_aux_head_width_option():
    """§3.3: C_mid = C/4 by default; C_mid = C "would cost 9.4 M params at C = 1024"."""
    assert AuxHead(64, 2).conv.out_channels == 16 and AuxHead(64, 2, reduction=1).conv.out_channels == 64
    assert abs(n_params(AuxHead(1024, 2, reduction=1)) - 9.4e6) < 0.05e6
    wide, default = MSAUNet(base=8, aux_reduction=1), MSAUNet(base=8)
    c = _widths(8)[1:]
    # conv 3×3 C→mid + BN(mid) + conv 1×1 mid→2 + bias 2, summed over the four heads
    head = lambda ch, mid: 9 * ch * mid + 2 * mid + 2 * mid + 2  # noqa: E731
    assert n_params(wide) - n_params(default) == sum(head(ch, ch) - head(ch, ch // 4) for ch in c)
    out = wide.train()(torch.randn(2, 3, 32, 32))
    assert [tuple(a.shape) for a in out["aux"]] == [(2, 2, 16, 16), (2, 2, 8, 8), (2, 2, 4, 4), (2, 2, 2, 2)]
    with pytest.raises(ValueError, match="reduction must be ≥ 1, got 0"):
        MSAUNet(base=4, aux_reduction=0)


def test_aux_position_option():
    """§11 A4: aux_k reads the stage_k output (default) or the down_k output; same weights, same keys."""
    torch.manual_seed(2)
    after_stage = MSAUNet(base=4)
    after_down = MSAUNet(base=4, aux_pos="down_out")
    after_down.load_state_dict(after_stage.state_dict())
    seen = {}
    for name, model in (("stage", after_stage), ("down", after_down)):
        hooks = [model.downs[0].register_forward_hook(lambda m, i, o: seen.__setitem__("down", o)),
                 model.stages[0].register_forward_hook(lambda m, i, o: seen.__setitem__("stage", o)),
                 model.aux_heads[0].register_forward_pre_hook(lambda m, i, n=name: seen.__setitem__(n, i[0]))]
        model.train()(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
        assert seen[name] is seen[name if name == "down" else "stage"]
        for h in hooks:
            h.remove()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = after_stage.train()(x), after_down.train()(x)
    torch.testing.assert_close(a["out"], b["out"], rtol=0, atol=0)  # the main path does not change
    assert [t.shape for t in a["aux"]] == [t.shape for t in b["aux"]]
    assert all((ta - tb).abs().max() > 1e-3 for ta, tb in zip(a["aux"], b["aux"]))
    with pytest.raises(ValueError, match=r"aux_pos must be one of \('stage_out', 'down_out'\), got 'mid'"):
        MSAUNet(base=4, aux_pos="mid")


def _msas(model):
    return [m for m in model.modules() if isinstance(m, MSA)]


def test_msa_options_reach_every_module():
    """msa_wrapper / msa_post_norm (§3.2 (a), (b)), cbam_zero_bn (§2.6), square/strip kernels (§2.5)."""
    c = _widths(8)[1:]
    default = MSAUNet(base=8)
    wrapped = MSAUNet(base=8, msa_wrapper="segnext")
    post = MSAUNet(base=8, msa_post_norm=True)
    assert all(m.wrapper == "none" and not m.post_norm for m in _msas(default))
    assert all(m.wrapper == "segnext" for m in _msas(wrapped)) and all(m.post_norm for m in _msas(post))
    assert n_params(wrapped) - n_params(default) == 2 * sum(2 * ch * ch + 4 * ch for ch in c)  # two MSAs per stage
    assert n_params(post) - n_params(default) == 2 * sum(2 * ch for ch in c)
    assert all(m.cbam.spatial_gate.bn.weight.item() == 0 for m in _msas(default))
    assert all(m.cbam.spatial_gate.bn.weight.item() == 1 for m in _msas(MSAUNet(base=8, cbam_zero_bn=False)))
    small = MSAUNet(base=8, square_kernel=3, strip_kernels=(5, 9))
    assert all(m.strip.conv0.kernel_size == (3, 3) and m.strip.strip_kernels == (5, 9) for m in _msas(small))
    # depthwise weights + biases per MSA: (25 + 2·39)·C + 7C = 110C by default, (9 + 2·14)·C + 5C = 42C here
    assert n_params(default) - n_params(small) == 2 * sum((110 - 42) * ch for ch in c)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    # train mode: at init an eval-mode post-norm BN is ≈ identity and its ReLU sees x·(1 + m′) ≥ 0 (x ≥ 0 after the
    # down ReLU, |m′| < 1 at init), so only batch statistics show the option
    with torch.no_grad():
        base_out = MSAUNet(base=8).train()(x)["out"]
        for options in ({"msa_wrapper": "segnext"}, {"msa_post_norm": True}, {"cbam_zero_bn": False}):
            torch.manual_seed(5)  # same draws as the default model for the shared parameters
            out = MSAUNet(base=8, **options).train()(x)["out"]
            assert out.shape == (2, 1, 32, 32)
            assert (out - base_out).abs().max() > 1e-4, options  # the option really changes the network
    with pytest.raises(ValueError, match=r"msa_wrapper must be one of \('none', 'segnext'\), got 'x'"):
        MSAUNet(base=4, msa=False, msa_wrapper="x")
    with pytest.raises(ValueError, match="odd and positive"):
        MSAUNet(base=4, strip_kernels=(7, 8))


def test_criterion_passes_kl_reduction():
    """§11 A5: the KL reduction is a criterion option (``--loss-config kl_reduction=...``)."""
    assert get_criterion("msa_unet").kl_reduction == "pixel_mean"
    assert get_criterion("msa_unet", kl_reduction="sum").kl_reduction == "sum"


def test_checkpoint_round_trip_with_options(tmp_path):
    config = dict(base=4, down_kernel=2, aux_reduction=2, aux_pos="down_out", msa_wrapper="segnext",
                  msa_post_norm=True, cbam_zero_bn=False, square_kernel=3, strip_kernels=(5, 9))
    model = get_model("msa_unet", **config)
    model.train()(torch.randn(2, 3, 32, 32))  # move BN running stats away from their init
    path = os.path.join(tmp_path, "msa_options.pt")
    save_checkpoint(path, model)
    loaded = load_model(path, expect="msa_unet")
    assert loaded.covseg_config == config and loaded.aux_pos == "down_out"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_bad_input_size_is_a_clear_error():
    model = MSAUNet(base=4).eval()
    with pytest.raises(ValueError, match="multiples of 16, got 40×48"):
        model(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))


def test_padding_crops_back_and_loss_pads_labels():
    model = MSAUNet(base=4, pad_input=True)
    x = torch.randn(2, 3, 40, 50)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 1, 40, 50)
    out = model.train()(x)
    assert out["out"].shape == (2, 1, 40, 50)
    assert [tuple(a.shape[-2:]) for a in out["aux"]] == [(24, 32), (12, 16), (6, 8), (3, 4)]  # padded 48×64
    loss, _ = get_criterion("msa_unet")(out, {"mask": (torch.rand(2, 1, 40, 50) > 0.5).float()})
    loss.backward()
    assert torch.isfinite(loss)


def test_registry_spec_and_checkpoint_round_trip(tmp_path):
    spec = get_spec("msa_unet")
    assert (spec.in_channels, spec.input_size, spec.normalization, spec.size_multiple) == (3, (256, 256), "imagenet", 16)
    model = get_model("msa_unet", base=4, strided=False)
    model.train()(torch.randn(2, 3, 32, 32))  # move BN running stats away from their init
    path = os.path.join(tmp_path, "msa.pt")
    save_checkpoint(path, model)
    loaded = load_model(path, expect="msa_unet")
    assert isinstance(loaded, MSAUNet) and loaded.covseg_config == {"base": 4, "strided": False}
    x = prepare_input(torch.rand(1, 1, 32, 32), spec)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.triton
def test_fused_equals_reference_model_train_and_eval():
    """Same weights, fused=True vs fused=False: fp32 outputs within 1e-5 abs, gradients within 1e-4 abs / 1e-3 rel.

    On CPU without TRITON_INTERPRET=1 both serve the reference (the test still checks the plumbing);
    under the interpreter (``-m triton``) the fused modules run Triton kernels where they exist. CBAM's spatial BN
    starts at γ = 1 (``cbam_zero_bn=False``) so that the spatial gate varies and its fused path is really compared.
    """
    torch.manual_seed(1)
    fused, reference = MSAUNet(base=4, fused=True, cbam_zero_bn=False), MSAUNet(base=4, fused=False, cbam_zero_bn=False)
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 32, 32)
    batch = {"mask": (torch.rand(2, 1, 32, 32) > 0.6).float()}
    out_f, loss_f, grads_f = outputs_and_grads(fused, x, get_criterion("msa_unet", fused=True), batch)
    out_r, loss_r, grads_r = outputs_and_grads(reference, x, get_criterion("msa_unet", fused=False), batch)
    for a, b in zip(out_f, out_r):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_f, loss_r, atol=1e-5, rtol=1e-5)
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_r[name], atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), reference.eval()(x), atol=1e-5, rtol=1e-5)


ALL_OPTIONS = dict(msa_wrapper="segnext", msa_post_norm=True, cbam_zero_bn=False, down_kernel=2, aux_pos="down_out")


CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.triton, cuda_only])


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_fused_equals_reference_model_with_all_options(device, monkeypatch):
    """Options on, spatial BN γ = 1 (the spatial gate varies): fused (Triton on CUDA) vs ``use_backend("reference")``.

    On plain CPU both serve the reference (plumbing of the options through the fused modules); the CUDA case runs
    the Triton kernels against PyTorch's convs in true fp32 (TF32 off). Outputs and loss within 1e-4 abs/rel,
    each parameter gradient within 1e-4 of its norm.
    """
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(4)
    fused, reference = MSAUNet(base=4, fused=True, **ALL_OPTIONS), MSAUNet(base=4, fused=False, **ALL_OPTIONS)
    reference.load_state_dict(fused.state_dict())
    fused.to(device), reference.to(device)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)).to(device)
    batch = {"mask": (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6)) > 0.6).float().to(device)}
    out_f, loss_f, grads_f = outputs_and_grads(fused, x, get_criterion("msa_unet", fused=True), batch)
    with use_backend("reference"):
        out_r, loss_r, grads_r = outputs_and_grads(reference, x, get_criterion("msa_unet", fused=False), batch)
    for a, b in zip(out_f, out_r):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss_f, loss_r, atol=1e-4, rtol=1e-4)
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        err, scale = (grads_f[name] - grads_r[name]).norm().item(), grads_r[name].norm().item()
        assert err <= 1e-4 * scale + 1e-7, f"{name}: |Δgrad| {err:.2e} vs |grad| {scale:.2e}"
    with torch.no_grad():
        fused_eval = fused.eval()(x)
        with use_backend("reference"):
            torch.testing.assert_close(fused_eval, reference.eval()(x), atol=1e-4, rtol=1e-4)


def test_torch_export_of_eval_model():
    model = MSAUNet(base=4).eval()
    x = torch.randn(1, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.data
def test_loss_decreases_overfitting_four_real_slices(shared_data):
    grey, mask = load_real_slices(shared_data, count=4, size=64)
    assert 0 < mask.mean() < 1
    x = prepare_input(grey, get_spec("msa_unet"))
    torch.manual_seed(0)
    model = get_model("msa_unet", base=8).train()
    criterion = get_criterion("msa_unet")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=1e-4)  # MODELS.md §3.5
    losses = []
    for _ in range(30):
        loss, parts = criterion(model(x), {"mask": mask})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts["total"])
    assert all(map(lambda v: v == v, losses)), losses  # no NaN
    assert min(losses[-5:]) < 0.6 * losses[0], losses
