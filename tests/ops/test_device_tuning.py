"""Launch heuristics follow the GPU they run on, and the ops' environment knobs stay out of traced code.

SM counts and roofline rates come from the CUDA device (``ops/triton/device.py``): its properties for the
SM count, a table keyed by its name for bandwidth and FLOP rates, a conservative default for an unknown
name. On this GPU-less machine a fake ``torch.cuda.get_device_properties`` stands in for the device.
"""
import types

import pytest
import torch

from covseg_fast.ops import knobs
from covseg_fast.ops.triton import device as dev
from covseg_fast.ops.triton import import_error

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make cuda:0 look like a GPU with the given name and SM count (nothing is launched)."""
    def install(name: str, sms: int):
        props = types.SimpleNamespace(name=name, multi_processor_count=sms)
        monkeypatch.setattr(dev, "_cuda_properties", lambda index: props)
    return install


@pytest.mark.parametrize("name,row", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA GH200 480GB", "GH200"), ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L40", "L40"), ("NVIDIA L4", "L4"), ("NVIDIA A10G", "A10"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
])
def test_rates_come_from_the_device_name(name, row):
    assert dev.rates_for_name(name).name == row


def test_an_unknown_gpu_gets_the_conservative_default(fake_gpu):
    fake_gpu("Some Future Accelerator", 48)
    rates = dev.peak_rates(CUDA0)
    assert rates is dev.DEFAULT_RATES and dev.sm_count(CUDA0) == 48


def test_cpu_and_meta_tensors_stand_for_an_h100():
    for device in (torch.device("cpu"), torch.device("meta")):
        assert dev.sm_count(device) == 132 and dev.peak_rates(device) is dev.REFERENCE_RATES


@pytest.mark.skipif(import_error is not None, reason=f"Triton unavailable: {import_error}")
def test_gram_split_follows_the_sm_count(fake_gpu):
    from covseg_fast.ops.triton.attention_gram_launch import split_plan

    splits = {}
    for sms in (20, 132):
        fake_gpu("NVIDIA H100 80GB HBM3", sms)
        splits[sms] = split_plan(16, 64, 65536, torch.bfloat16, CUDA0)[0]
    assert splits[20] < splits[132], splits  # ≈ 2 programs per SM either way


def test_cbam_tiles_follow_the_sm_count():
    from covseg_fast.ops.triton.cbam_tiles import _pixel_blocks, stats_splits

    assert _pixel_blocks(16, 2048, 121, sms=8) != _pixel_blocks(16, 2048, 121, sms=132)
    assert stats_splits(16, 64, 65536, sms=8)[2] < stats_splits(16, 64, 65536, sms=132)[2]


def test_channel_attention_path_uses_the_device_rates(fake_gpu):
    """The rule is the cheaper estimate with the device's rates; for some shapes that differs between GPUs."""
    from covseg_fast.ops.triton import attention_cost as cost

    shapes = [(16, c, n) for c in (64, 128, 256, 512, 1024, 2048) for n in (121, 484, 1936, 7744)]
    decisions = {}
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA L4", "Unknown GPU"):
        fake_gpu(name, 132)
        rates = dev.peak_rates(CUDA0)
        got = [cost.channel_attention_path(b, c, n, torch.bfloat16, True, CUDA0) for b, c, n in shapes]
        want = ["gram" if cost.channel_gram_cost(b, c, n, torch.bfloat16).seconds(torch.bfloat16, rates=rates)
                <= cost.channel_flash_cost(b, c, n, torch.bfloat16, True).seconds(torch.bfloat16, rates=rates)
                else "flash" for b, c, n in shapes]
        assert got == want, name
        decisions[name] = got
    assert len({tuple(d) for d in decisions.values()}) > 1, "no shape where the GPU changes the path"


def test_knobs_are_not_read_from_the_environment_while_compiling(monkeypatch):
    """Eager calls follow the environment; a graph being traced gets the last eager value, never os.environ."""
    monkeypatch.setenv("COVSEG_STRIP_CONV_SCHEDULE", "split")
    assert knobs.value("COVSEG_STRIP_CONV_SCHEDULE") == "split"
    monkeypatch.setenv("COVSEG_STRIP_CONV_SCHEDULE", "single")
    seen = []

    def traced(x):
        seen.append(knobs.value("COVSEG_STRIP_CONV_SCHEDULE"))
        return x + 1

    torch._dynamo.reset()
    torch.compile(traced, fullgraph=True, backend="eager")(torch.zeros(2))
    assert seen == ["split"]
    assert knobs.value("COVSEG_STRIP_CONV_SCHEDULE") == "single"  # eager: the environment as it is now
    knobs.refresh()


def test_unknown_knob_is_named():
    with pytest.raises(KeyError, match="COVSEG_NOPE"):
        knobs.value("COVSEG_NOPE")
