"""The shipped screening model: what it is, where it came from, and how it reads CT.

These pin the asset to its documented recipe (tools/make_demo_checkpoint.py, docs/recipe_search.md):
a regression here means the asset and its documentation disagree.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from covseg_fast.models.model_input import resolve_input
from covseg_fast.models.registry import load_model, read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSET = os.path.join(ROOT, "covseg_fast", "assets", "demo_checkpoint.pt")
TOOL = os.path.join(ROOT, "tools", "make_demo_checkpoint.py")


def _tool():
    spec = importlib.util.spec_from_file_location("make_demo_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def payload():
    if not os.path.isfile(ASSET):
        pytest.skip("covseg_fast/assets/demo_checkpoint.pt is not in this checkout")
    return read_checkpoint(ASSET)  # weights_only=True: plain data and tensors only


def test_asset_is_small_enough_to_commit():
    assert os.path.getsize(ASSET) <= 25_000_000


def test_provenance_names_command_commit_data_licence_and_scores(payload):
    prov = payload["provenance"]
    assert prov["command"] == _tool().COMMAND  # trained exactly by the documented tool
    assert len(prov["commit"]) >= 7 and prov["checkpoint"] == "finetune/last.pt"
    assert "non-commercial" in prov["data"] and "not a medical device" in prov["licence"]
    studies = prov["cross_validation"]  # one entry per crossval study of the recipe
    assert max(len(cv["seeds"]) for cv in studies) >= 2  # chosen with at least two seeds
    for cv in studies:
        assert len(cv["dice_per_seed"]) == len(cv["seeds"]) and cv["commit"]
        assert 0.0 < cv["dice"]["mean"] < 1.0 and cv["dice"]["std"] >= 0.0


def test_screening_reads_the_trained_size_window_and_plane(payload):
    chosen = resolve_input(payload, ASSET)
    assert tuple(chosen.size) == (128, 128) and "recorded in the checkpoint" in chosen.size_source
    assert tuple(chosen.window) == (-1110.0, 260.0) and chosen.window_source == "recorded in the checkpoint"
    assert chosen.plane == "transposed"  # COVID-SemiSeg stores its slices transposed (docs/intensity_window.md)


def test_asset_is_the_recipe_model(payload):
    model = load_model(ASSET, expect="msa_unet").eval()
    assert payload["config"] == {"base": 16}
    assert payload["train"]["config"]["augment"] == "none"
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 128, 128))
    assert out.shape == (1, 1, 128, 128) and torch.isfinite(out).all()
