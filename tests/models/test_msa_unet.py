"""MSA-UNet: parameter counts, shapes, ablation switches, input sizes, registry, fused == reference, export, overfit."""
import os

import pytest
import torch

from covseg_fast.models import MSAUNet, get_criterion, get_model, get_spec, load_model, prepare_input, save_checkpoint
from covseg_fast.nn import MSA
from model_harness import load_real_slices, n_params, outputs_and_grads

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
    under the interpreter (``-m triton``) the fused modules run Triton kernels where they exist.
    """
    torch.manual_seed(1)
    fused, reference = MSAUNet(base=4, fused=True), MSAUNet(base=4, fused=False)
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
