"""Plain U-Net baseline: parameter counts, shapes, input sizes, registry round trip, export, criterion, overfit."""
import os

import pytest
import torch

from covseg_fast.models import UNet, get_criterion, get_model, get_spec, load_model, prepare_input, save_checkpoint
from model_harness import load_real_slices, n_params


@pytest.mark.parametrize("base,expected", [(8, 486_553), (16, 1_942_577), (64, 31_037_633)])
def test_parameter_counts_match_docstring(base, expected):
    assert n_params(UNet(base=base)) == expected  # base 64 = milesial's UNet(3, 1, bilinear=False)
    assert f"{expected:,}" in UNet.__doc__


def test_output_shapes_train_and_eval():
    model = UNet(base=4, num_classes=3, in_channels=1)
    x = torch.randn(2, 1, 48, 32)
    out = model.train()(x)
    assert out["out"].shape == (2, 3, 48, 32) and out["aux"] == []
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 48, 32)
    assert UNet(base=4, bilinear=True).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_structure_is_max_pool_and_double_convs():
    model = UNet(base=8)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [64, 32, 16, 8]


def test_bad_input_size_and_padding():
    with pytest.raises(ValueError, match="multiples of 16, got 33×32"):
        UNet(base=4).eval()(torch.randn(1, 3, 33, 32))
    model = UNet(base=4, pad_input=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 1, 33, 47)


def test_criterion_is_bce_only_and_ce_for_classes():
    model = UNet(base=4).train()
    x = torch.randn(2, 3, 32, 32)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    out = model(x)
    loss, parts = get_criterion("unet")(out, {"mask": mask})
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(out["out"], mask))
    assert set(parts) == {"main", "total"}
    labels = torch.randint(0, 3, (2, 32, 32))
    out3 = UNet(base=4, num_classes=3).train()(x)
    loss3, _ = get_criterion("unet", num_classes=3)(out3, {"mask": mask, "labels": labels})
    torch.testing.assert_close(loss3, torch.nn.functional.cross_entropy(out3["out"], labels))


def test_registry_checkpoint_round_trip(tmp_path):
    spec = get_spec("unet")
    assert (spec.in_channels, spec.input_size, spec.size_multiple) == (3, (256, 256), 16)
    model = get_model("unet", base=4, bilinear=True)
    model.train()(torch.randn(2, 3, 32, 32))
    path = os.path.join(tmp_path, "unet.pt")
    save_checkpoint(path, model)
    loaded = load_model(path)
    x = prepare_input(torch.rand(1, 1, 32, 32), spec)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_torch_export_of_eval_model():
    model = UNet(base=4).eval()
    x = torch.randn(1, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.data
def test_loss_decreases_overfitting_four_real_slices(shared_data):
    grey, mask = load_real_slices(shared_data, count=4, size=64)
    x = prepare_input(grey, get_spec("unet"))
    torch.manual_seed(0)
    model = get_model("unet", base=8).train()
    criterion = get_criterion("unet")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=1e-4)
    losses = []
    for _ in range(30):
        loss, parts = criterion(model(x), {"mask": mask})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts["total"])
    assert min(losses[-5:]) < 0.6 * losses[0], losses
