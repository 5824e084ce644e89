"""TensorRT engine build and run (only where `tensorrt` imports and a CUDA GPU is present).

The same code paths are checked everywhere with a fake `tensorrt` module in test_tensorrt_fake.py; this file
runs the real TensorRT. On a machine with an NVIDIA GPU (TensorRT 10.x: opset-18 graphs need ≥ 10.0, and
TensorRT 11 has no fp16/bf16 builder flags):

    pip install "tensorrt-cu12>=10,<11"     # tensorrt-cu13 when python -c "import torch; print(torch.version.cuda)" says 13.x
    python -m pytest tests/export/test_tensorrt.py tests/inference/test_backends.py -k tensorrt -ra
"""
import json
import logging

import pytest
import torch

trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed here (see the module docstring)")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")]

from covseg_fast.export import export_onnx, reference_modules  # noqa: E402
from covseg_fast.export.tensorrt_engine import TensorRTRunner, build_engine  # noqa: E402
from covseg_fast.models import get_model  # noqa: E402
from tests.export.test_onnx_export import TinyAttentionNet  # noqa: E402,F401  (registers the tiny model)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = get_model("tiny_attention_test", width=8).eval()
    onnx_path = str(tmp_path_factory.mktemp("trt") / "tiny.onnx")
    export_onnx(model, onnx_path)
    return model, onnx_path


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 2e-2), ("bf16", 5e-2)])
def test_engine_matches_pytorch(tmp_path, tiny, precision, tolerance):
    model, onnx_path = tiny
    engine = str(tmp_path / f"tiny_{precision}.engine")
    settings = build_engine(onnx_path, engine, precision=precision, opt_batch=4, max_batch=8, height=32, width=32,
                            channels=1, timing_cache=str(tmp_path / "cache.bin"))
    assert json.load(open(engine + ".json"))["precision"] == precision == settings.precision
    runner = TensorRTRunner(engine)
    x = torch.rand(3, 1, 32, 32, device="cuda")
    with torch.no_grad(), reference_modules(model.cuda()):
        expected = torch.sigmoid(model(x))
    assert (torch.sigmoid(runner(x)) - expected).abs().max().item() <= tolerance


def test_profile_limit_and_timing_cache_reuse(tmp_path, tiny, caplog):
    _, onnx_path = tiny
    cache = tmp_path / "cache.bin"
    build_engine(onnx_path, str(tmp_path / "a.engine"), precision="fp16", opt_batch=2, max_batch=4, height=32,
                 width=32, channels=1, timing_cache=str(cache))
    assert cache.stat().st_size > 0
    with caplog.at_level(logging.INFO):
        build_engine(onnx_path, str(tmp_path / "b.engine"), precision="fp16", opt_batch=2, max_batch=4, height=32,
                     width=32, channels=1, timing_cache=str(cache))
    assert "using the timing cache" in caplog.text and "rejected" not in caplog.text
    runner = TensorRTRunner(str(tmp_path / "b.engine"))
    assert runner(torch.rand(4, 1, 32, 32, device="cuda")).shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match=r"a batch of 5 is more than .* \(max batch 4\)"):
        runner(torch.rand(5, 1, 32, 32, device="cuda"))


def test_engine_for_another_gpu_is_a_clear_error(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0" * 16)
    (tmp_path / "x.engine.json").write_text(json.dumps({"compute_capability": "1.0", "tensorrt": "0"}))
    with pytest.raises(RuntimeError, match="built for compute capability 1.0"):
        TensorRTRunner(str(engine))
