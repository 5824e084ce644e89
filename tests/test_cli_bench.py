"""`covseg bench` measures a registered model or a checkpoint, per backend, and reports clear errors."""
import json

from covseg_fast.cli.main import main
from covseg_fast.cli import screen as screen_cli


def test_bench_registered_model_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "msa_unet", "--config", "base=4", "--device", "cpu", "--batch-size", "2",
                 "--size", "32", "32", "--iters", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "msa_unet" and result["config"] == {"base": 4} and result["images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out


def test_bench_demo_checkpoint_with_onnxruntime(tmp_path):
    out = tmp_path / "ort.json"
    assert main(["bench", "--checkpoint", screen_cli.DEMO_CHECKPOINT, "--backend", "onnxruntime", "--device", "cpu",
                 "--batch-size", "1", "--size", "64", "64", "--iters", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["backend"] == "onnxruntime"


def test_bench_errors(tmp_path, caplog):
    assert main(["bench", "--model", "no_such_model", "--device", "cpu"]) == 2
    assert "unknown model" in caplog.text
    assert main(["bench", "--model", "msa_unet", "--config", "base", "--device", "cpu"]) == 2
    assert main(["bench", "--checkpoint", str(tmp_path / "missing.pt"), "--device", "cpu"]) == 2
    assert main(["bench", "--model", "unet", "--backend", "tensorrt", "--device", "cpu"]) == 2
