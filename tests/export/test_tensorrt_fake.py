"""TensorRT engine build and runner code paths on a machine without TensorRT, with a fake ``tensorrt`` module.

These tests check OUR USE of the TensorRT 10 Python API, not TensorRT itself: the optimisation profile,
precision flags, workspace and timing cache we hand to the builder, the settings JSON written beside the
engine, and our errors (engine for another GPU or TensorRT version, batch over the profile, TensorRT too
old or without precision flags, parse/build failures). The fake (tests/export/fake_tensorrt.py) records the
calls and builds nothing; the real build and run are in test_tensorrt.py, which needs TensorRT and a GPU.
"""
import dataclasses
import hashlib
import json
import logging
import sys

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from covseg_fast.export import tensorrt_engine as te
from covseg_fast.export.tensorrt_engine import TensorRTRunner, build_engine, import_tensorrt

from .fake_tensorrt import CACHE_MAGIC, ENGINE_MAGIC, calls_named, make_module


def install(monkeypatch, trt):
    """Make ``import tensorrt`` return the fake and the fake's GPU the current one."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "gpu_identity", lambda: (trt.fake.gpu, trt.fake.capability))
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    return install(monkeypatch, make_module())


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """A one-node ONNX graph with our exported graphs' input: 'image' (batch, 3, H, W) → 'logits'."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, "h", "w"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceMean", ["image", "axes"], ["logits"], keepdims=1)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [axes]),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    onnx.save(model, path)
    return path


def build(onnx_file, engine, **kwargs):
    args = dict(precision="fp16", min_batch=1, opt_batch=8, max_batch=48, height=64, width=96, channels=3,
                workspace_gib=2.0)
    args.update(kwargs)
    return build_engine(onnx_file, str(engine), **args)


@pytest.mark.parametrize("precision,flags", [("fp32", []), ("fp16", ["FP16"]), ("bf16", ["BF16"])])
def test_build_passes_profile_precision_workspace_and_writes_settings(fake_trt, onnx_file, tmp_path, precision,
                                                                       flags):
    engine = tmp_path / "x.engine"
    settings = build(onnx_file, engine, precision=precision)
    assert calls_named(fake_trt, "Builder.create_network") == [((0,), {})]
    assert calls_named(fake_trt, "OnnxParser.parse_from_file") == [((onnx_file,), {})]
    # one profile over the batch at the fixed (C, H, W), for the graph's input name
    assert calls_named(fake_trt, "IOptimizationProfile.set_shape") == [
        (("image", (1, 3, 64, 96), (8, 3, 64, 96), (48, 3, 64, 96)), {})]
    assert len(calls_named(fake_trt, "IBuilderConfig.add_optimization_profile")) == 1
    assert [repr(a[0]) for a, _ in calls_named(fake_trt, "IBuilderConfig.set_flag")] == [f"BuilderFlag.{f}"
                                                                                      for f in flags]
    assert calls_named(fake_trt, "IBuilderConfig.set_memory_pool_limit") == [
        ((fake_trt.MemoryPoolType.WORKSPACE, 2 << 30), {})]
    assert engine.read_bytes().startswith(ENGINE_MAGIC)
    written = json.loads((tmp_path / "x.engine.json").read_text())
    assert written == dataclasses.asdict(settings)
    expected = {"precision": precision, "min_batch": 1, "opt_batch": 8, "max_batch": 48, "height": 64, "width": 96,
                "channels": 3, "workspace_gib": 2.0, "tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3",
                "compute_capability": "9.0", "timing_cache": None,
                "onnx_sha256": hashlib.sha256(open(onnx_file, "rb").read()).hexdigest()}
    assert {k: written[k] for k in expected} == expected


def test_timing_cache_is_read_before_and_written_after_each_build(fake_trt, onnx_file, tmp_path):
    cache = tmp_path / "trt.cache"
    build(onnx_file, tmp_path / "a.engine", timing_cache=str(cache))
    assert [a[0] for a, _ in calls_named(fake_trt, "IBuilderConfig.create_timing_cache")] == [b""]
    assert [kw for _, kw in calls_named(fake_trt, "IBuilderConfig.set_timing_cache")] == [{"ignore_mismatch": False}]
    first = cache.read_bytes()
    assert json.loads(first[len(CACHE_MAGIC):]) == {"gpu": "NVIDIA H100 80GB HBM3", "entries": 1}
    assert json.loads((tmp_path / "a.engine.json").read_text())["timing_cache"] == str(cache)

    build(onnx_file, tmp_path / "b.engine", timing_cache=str(cache))
    blobs = [a[0] for a, _ in calls_named(fake_trt, "IBuilderConfig.create_timing_cache")]
    assert blobs == [b"", first]  # the second build started from the first one's cache ...
    assert json.loads(cache.read_bytes()[len(CACHE_MAGIC):])["entries"] == 2  # ... and wrote it back


@pytest.mark.parametrize("blob", [CACHE_MAGIC + b'{"gpu": "NVIDIA A100-SXM4-80GB", "entries": 5}', b"garbage"],
                         ids=["another_gpu", "unreadable"])
def test_rejected_timing_cache_is_replaced_by_a_new_one(fake_trt, onnx_file, tmp_path, caplog, blob):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(blob)
    with caplog.at_level(logging.WARNING):
        build(onnx_file, tmp_path / "x.engine", timing_cache=str(cache))
    assert "rejected the timing cache" in caplog.text
    assert [a[0] for a, _ in calls_named(fake_trt, "IBuilderConfig.create_timing_cache")] == [blob, b""]
    assert json.loads(cache.read_bytes()[len(CACHE_MAGIC):]) == {"gpu": "NVIDIA H100 80GB HBM3", "entries": 1}


def test_parse_and_build_failures_are_clear_errors_and_write_nothing(fake_trt, onnx_file, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(RuntimeError, match="TensorRT cannot parse .*bad.onnx: ModelImporter"):
        build(str(bad), tmp_path / "a.engine")
    fake_trt.fake.fail_build = True
    with pytest.raises(RuntimeError, match="failed to build an engine"):
        build(onnx_file, tmp_path / "b.engine")
    assert not list(tmp_path.glob("*.engine*"))


def test_graph_with_another_channel_count_is_refused(fake_trt, onnx_file, tmp_path):
    with pytest.raises(ValueError, match=r"expected \(batch, 1, H, W\)"):
        build(onnx_file, tmp_path / "x.engine", channels=1)


def test_argument_errors_need_no_tensorrt(monkeypatch, onnx_file, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails
    with pytest.raises(ValueError, match="precision must be"):
        build(onnx_file, tmp_path / "x.engine", precision="int8")
    with pytest.raises(ValueError, match="min_batch ≤ opt_batch ≤ max_batch"):
        build(onnx_file, tmp_path / "x.engine", opt_batch=64, max_batch=32)
    with pytest.raises(RuntimeError, match=r'TensorRT is not installed: pip install "tensorrt-cu12>=10,<11"'):
        build(onnx_file, tmp_path / "x.engine")


def test_tensorrt_versions(monkeypatch, onnx_file, tmp_path):
    install(monkeypatch, make_module("8.6.1"))
    with pytest.raises(RuntimeError, match=r"TensorRT 8.6.1 is too old: covseg needs TensorRT ≥ 10.0"):
        import_tensorrt()
    # TensorRT 11 dropped the weak-typing precision flags: fp16/bf16 is a clear error, fp32 still builds
    trt11 = install(monkeypatch, make_module("11.0.0", precision_flags=False))
    for precision in ("fp16", "bf16"):
        with pytest.raises(RuntimeError, match=f"no BuilderFlag.{precision.upper()} .*TensorRT 11 removed"):
            build(onnx_file, tmp_path / "x.engine", precision=precision)
    assert build(onnx_file, tmp_path / "x.engine", precision="fp32").tensorrt == "11.0.0"
    assert calls_named(trt11, "IBuilderConfig.set_flag") == []


def test_runner_refuses_an_engine_for_another_gpu_or_tensorrt(monkeypatch, onnx_file, tmp_path, caplog):
    trt = install(monkeypatch, make_module())
    engine = str(tmp_path / "x.engine")
    build(onnx_file, engine)
    assert TensorRTRunner(engine).max_batch == 48
    trt.fake.capability = "8.0"  # an A100
    with pytest.raises(RuntimeError, match=r"built for compute capability 9.0 with TensorRT 10.3.0; this is "
                                           r".*\(capability 8.0\).*rebuild it"):
        TensorRTRunner(engine)
    install(monkeypatch, make_module("10.4.0"))
    with pytest.raises(RuntimeError, match=r"TensorRT 10.3.0; this is .* with TensorRT 10.4.0"):
        TensorRTRunner(engine)
    # same capability, other model name: runs, with a warning
    install(monkeypatch, make_module(gpu="NVIDIA H100 PCIe"))
    with caplog.at_level(logging.WARNING):
        TensorRTRunner(engine)
    assert "was built on NVIDIA H100 80GB HBM3, this is NVIDIA H100 PCIe" in caplog.text


def test_runner_refuses_a_file_that_is_not_an_engine(fake_trt, tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(RuntimeError, match="not a TensorRT engine"):
        TensorRTRunner(str(engine))


def test_runner_checks_the_batch_limit_and_profile_before_running(fake_trt, onnx_file, tmp_path):
    engine = str(tmp_path / "x.engine")
    build(onnx_file, engine, max_batch=48)
    runner = TensorRTRunner(engine)
    with pytest.raises(ValueError, match=r"a batch of 49 is more than .*x.engine was built for \(max batch 48\).*"
                                         r"--max-batch"):
        runner(torch.zeros(49, 3, 64, 96))
    with pytest.raises(ValueError, match=r"\(4, 3, 32, 32\) is outside the optimisation profile"):
        runner(torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match="must be a CUDA tensor"):  # within the profile, but on the CPU
        runner(torch.zeros(48, 3, 64, 96))
    assert calls_named(fake_trt, "IExecutionContext.execute_async_v3") == []
