"""Backbones: official parameter/key counts and names, f1..f5 taps, user-supplied weight loading."""
import os

import pytest
import torch

from covseg_fast.models.backbones import (VGG16, ResNet50, build_backbone, load_pretrained, load_res2net_weights,
                                          res2net50_v1b_26w_4s, sha256_of)
from covseg_fast.models.backbones import res2net as res2net_mod


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_res2net50_matches_the_official_release_counts_and_keys():
    with torch.device("meta"):
        model = res2net50_v1b_26w_4s(with_classifier=True)
    keys = list(model.state_dict())
    assert n_params(model) == 25_718_352
    assert len(keys) == 524
    for key in ["conv1.0.weight", "conv1.1.running_var", "conv1.3.weight", "conv1.6.weight", "bn1.weight",
                "layer1.0.convs.0.weight", "layer1.0.bns.2.running_mean", "layer1.0.downsample.1.weight",
                "layer1.0.downsample.2.weight", "layer2.3.conv3.weight", "layer4.2.bn3.bias", "fc.weight", "fc.bias"]:
        assert key in keys, key
    assert not any(k.startswith("layer1.1.downsample") for k in keys)


def test_res2net_without_classifier_drops_only_fc():
    with torch.device("meta"):
        full, bare = res2net50_v1b_26w_4s(True), res2net50_v1b_26w_4s(False)
    assert set(full.state_dict()) - set(bare.state_dict()) == {"fc.weight", "fc.bias"}


def test_torchvision_layouts_counts_and_keys():
    with torch.device("meta"):
        resnet, vgg = ResNet50(with_classifier=True), VGG16(with_classifier=True)
    assert n_params(resnet) == 25_557_032  # torchvision resnet50
    assert n_params(vgg) == 138_357_544  # torchvision vgg16
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_mean", "fc.weight"} <= set(resnet.state_dict())
    assert {"features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.6.weight"} <= set(
        vgg.state_dict())


@pytest.mark.parametrize("name", ["res2net50", "resnet50", "vgg16"])
def test_taps_have_strides_2_to_32_and_declared_widths(name):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s)
                                             for c, s in zip(model.channels, (2, 4, 8, 16, 32))]


def test_res2net_taps_at_352():
    model = res2net50_v1b_26w_4s(False).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 352, 352))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 176, 176), (256, 88, 88), (512, 44, 44), (1024, 22, 22),
                                                   (2048, 11, 11)]


def _saved_random_res2net(path):
    torch.manual_seed(1)
    source = res2net50_v1b_26w_4s(True)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, buf in source.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    torch.save(source.state_dict(), path)
    return source


def test_weight_loading_round_trip_and_errors(tmp_path, monkeypatch):
    path = str(tmp_path / "res2net50_v1b_26w_4s-3cf99910.pth")
    source = _saved_random_res2net(path)
    target = res2net50_v1b_26w_4s(True)
    load_res2net_weights(target, path)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k
    bare = load_res2net_weights(res2net50_v1b_26w_4s(False), path)  # fc keys dropped, everything else strict
    assert torch.equal(bare.layer3[2].conv1.weight,
                       source.layer3[2].conv1.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source.eval()(x)[-1], bare.eval()(x)[-1])

    # size first, then both published ends of the sha256: a random file has neither
    digest, size = sha256_of(path), os.path.getsize(path)
    with pytest.raises(ValueError, match=r"bytes, but res2net50_v1b_26w_4s-3cf99910.pth has 103,197,949"):
        load_res2net_weights(res2net50_v1b_26w_4s(True), path, verify_sha256=True)
    monkeypatch.setattr(res2net_mod, "RES2NET50_SIZE", size)
    with pytest.raises(ValueError, match=r"sha256 [0-9a-f]{64} does not match '3cf99910a0f1a4c9…139c'"):
        load_res2net_weights(res2net50_v1b_26w_4s(True), path, verify_sha256=True)
    monkeypatch.setattr(res2net_mod, "RES2NET50_SHA256_PREFIX", digest[:16])
    with pytest.raises(ValueError, match="does not match"):     # right start, wrong end
        load_res2net_weights(res2net50_v1b_26w_4s(True), path, verify_sha256=True)
    monkeypatch.setattr(res2net_mod, "RES2NET50_SHA256_SUFFIX", digest[-4:])
    load_res2net_weights(res2net50_v1b_26w_4s(True), path, verify_sha256=True)


def test_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="res2net50_v1b_26w_4s-3cf99910.pth.*--config pretrained_backbone="):
        load_res2net_weights(res2net50_v1b_26w_4s(False), str(tmp_path / "nope.pth"))


def test_wrong_keys_and_garbage_files_are_clear_errors(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.0.weight": torch.zeros(32, 3, 3, 3)}, wrong)
    with pytest.raises(ValueError, match="weights do not fit Res2Net"):
        load_res2net_weights(res2net50_v1b_26w_4s(False), str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_res2net_weights(res2net50_v1b_26w_4s(False), str(garbage))


def test_torchvision_style_files_load_into_resnet_and_vgg(tmp_path):
    for model in (ResNet50(with_classifier=True), VGG16(with_classifier=False)):
        path = str(tmp_path / f"{type(model).__name__}.pth")
        torch.save(model.state_dict(), path)
        fresh = type(model)(with_classifier=False)
        load_pretrained(fresh, path)  # a ResNet file with fc loads into a classifier-less model
        key = "features.0.weight" if isinstance(model, VGG16) else "layer2.1.conv2.weight"
        assert torch.equal(fresh.state_dict()[key], model.state_dict()[key])


@pytest.mark.skipif(not os.environ.get("COVSEG_RES2NET50_WEIGHTS"),
                    reason="set COVSEG_RES2NET50_WEIGHTS to the official res2net50_v1b_26w_4s-3cf99910.pth to test it")
def test_official_file_loads_and_verifies():
    model = load_res2net_weights(res2net50_v1b_26w_4s(True), os.environ["COVSEG_RES2NET50_WEIGHTS"],
                                 verify_sha256=True)
    assert n_params(model) == 25_718_352
