"""TensorRT engine build and run (only where `tensorrt` imports and a CUDA GPU is present).

How to run it on a machine that has both: `pip install tensorrt-cu13` (or -cu12, matching torch's
CUDA), then `python -m pytest tests/export/test_tensorrt.py -ra`.
"""
import json

import pytest
import torch

trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed here (see the module docstring)")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")

from covseg_fast.export import export_onnx, reference_modules  # noqa: E402
from covseg_fast.export.tensorrt_engine import TensorRTRunner, build_engine  # noqa: E402
from covseg_fast.models import get_model  # noqa: E402
from tests.export.test_onnx_export import TinyAttentionNet  # noqa: E402,F401  (registers the tiny model)


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_pytorch(tmp_path, precision, tolerance):
    model = get_model("tiny_attention_test", width=8)
    onnx_path = str(tmp_path / "tiny.onnx")
    export_onnx(model, onnx_path)
    engine = str(tmp_path / f"tiny_{precision}.engine")
    settings = build_engine(onnx_path, engine, precision=precision, opt_batch=4, max_batch=8, height=32, width=32,
                            channels=1, timing_cache=str(tmp_path / "cache.bin"))
    assert json.load(open(engine + ".json"))["precision"] == precision == settings.precision
    runner = TensorRTRunner(engine)
    x = torch.rand(3, 1, 32, 32, device="cuda")
    with torch.no_grad(), reference_modules(model.cuda().eval()):
        expected = torch.sigmoid(model(x))
    assert (torch.sigmoid(runner(x)) - expected).abs().max().item() <= tolerance


def test_engine_for_another_gpu_is_a_clear_error(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0" * 16)
    (tmp_path / "x.engine.json").write_text(json.dumps({"compute_capability": "1.0", "tensorrt": "0"}))
    with pytest.raises(RuntimeError, match="built for compute capability 1.0"):
        TensorRTRunner(str(engine))
