"""Presets carry the papers' values (MODELS.md §3.5, §4.4, §6, §11 A6/A16); overrides; schedules."""
import pytest
import torch

from covseg_fast.train import PRESETS, TrainConfig, preset_for_model, resolve_config
from covseg_fast.train.batching import multiscale_sizes, scaled_size
from covseg_fast.train.optim import EpochLRFactor, build_optimizer, build_scheduler, clip_gradients


def test_msa_unet_preset():
    c = PRESETS["msa_unet"]
    assert (c.optimizer, c.lr, c.weight_decay, c.momentum, c.alpha, c.eps) == ("rmsprop", 1e-3, 1e-4, 0.0, 0.99, 1e-8)
    assert (c.batch_size, c.epochs, c.input_size, c.scales, c.clip, c.lr_schedule) == (8, 70, 256, (1.0,), None,
                                                                                       "constant")
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], c)
    assert isinstance(opt, torch.optim.RMSprop)
    g = opt.param_groups[0]
    assert (g["lr"], g["weight_decay"], g["momentum"], g["alpha"], g["eps"]) == (1e-3, 1e-4, 0.0, 0.99, 1e-8)


def test_refnet_and_infnet_presets():
    c = PRESETS["refnet"]
    assert (c.optimizer, c.lr, c.batch_size, c.epochs, c.input_size) == ("adam", 1e-4, 2, 100, 352)
    assert c.scales == (0.75, 1.0, 1.25) and (c.clip, c.clip_mode) == (0.5, "value")
    assert (c.lr_schedule, c.decay_epoch, c.decay_rate) == ("infnet_compounding", 50, 0.1)
    assert multiscale_sizes((352, 352), c.scales, 32) == [(256, 256), (352, 352), (448, 448)]
    i = PRESETS["infnet"]
    assert (i.batch_size, i.epochs) == (24, 99)
    # §4.4: GT and edges resized bilinear and not re-binarised; MSA-UNet keeps them binary (§3.5)
    assert c.mask_resize == i.mask_resize == "bilinear" and PRESETS["msa_unet"].mask_resize == "nearest"
    assert c.augment == i.augment == PRESETS["msa_unet"].augment == "none"
    assert isinstance(build_optimizer([torch.nn.Parameter(torch.zeros(2))], c), torch.optim.Adam)
    assert preset_for_model("refnet") == "refnet" and preset_for_model("msa_unet") == "msa_unet"
    with pytest.raises(KeyError, match="no default preset"):
        preset_for_model("mystery")


def test_overrides():
    c = resolve_config("refnet", {"batch_size": 8, "lr_schedule": "step50", "scales": [1], "epochs": None})
    assert (c.batch_size, c.lr_schedule, c.scales, c.epochs) == (8, "step50", (1.0,), 100)
    assert PRESETS["refnet"].batch_size == 2   # the preset itself is untouched
    with pytest.raises(ValueError, match="unknown training setting 'batchsize'"):
        resolve_config("refnet", {"batchsize": 8})
    with pytest.raises(ValueError, match="mask_resize must be one of"):
        resolve_config("refnet", {"mask_resize": "cubic"})
    with pytest.raises(ValueError, match="augment must be one of"):
        resolve_config("refnet", {"augment": "mixup"})
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        resolve_config("refnet", {"lr_schedule": "cosine"})
    with pytest.raises(KeyError, match="unknown preset"):
        resolve_config("nope")
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0)


def _lrs(schedule, epochs):
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = resolve_config("refnet", {"lr_schedule": schedule})
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_infnet_compounding_reproduces_adjust_lr():
    # Inf-Net: for epoch in range(1, 100): adjust_lr(opt, lr, epoch, 0.1, 50) → lr *= 0.1 ** (epoch // 50)
    lr, expected = 1e-4, []
    for epoch in range(1, 100):
        lr *= 0.1 ** (epoch // 50)
        expected.append(lr)
    got = _lrs("infnet_compounding", 99)
    assert got[:49] == [1e-4] * 49
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert got[49] == pytest.approx(1e-5) and got[50] == pytest.approx(1e-6)
    # the closed form equals the brute-force exponent, including past epoch 100
    f = EpochLRFactor("infnet_compounding", 50, 0.5)
    for i in range(0, 160):
        assert f(i) == 0.5 ** sum(k // 50 for k in range(1, i + 2))


def test_step50_and_constant():
    got = _lrs("step50", 100)
    assert got[:49] == [1e-4] * 49 and got[49:] == pytest.approx([1e-5] * 51)
    assert _lrs("constant", 60) == [1e-4] * 60


def test_clip_gradients_value_and_norm():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([-2.0, -0.1, 0.3, 5.0])
    clip_gradients([p], 0.5, "value")
    assert torch.equal(p.grad, torch.tensor([-0.5, -0.1, 0.3, 0.5]))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    clip_gradients([p], 1.0, "norm")
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]), atol=1e-6)
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    clip_gradients([p], None)
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0, 0.0, 0.0]))
    assert scaled_size(352, 0.75) == 256 and scaled_size(352, 1.25) == 448
