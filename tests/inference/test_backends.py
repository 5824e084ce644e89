"""`covseg screen --backend`: torch, torch.compile and onnxruntime give the same masks (Dice ≥ 0.99)."""
import os

import nibabel as nib
import numpy as np
import pytest

from covseg_fast.cli import screen as screen_cli
from covseg_fast.cli.main import main

from .tiny_model import make_checkpoint


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


def screen(tmp_path, checkpoint, backend, name):
    out = tmp_path / name
    code = main(["screen", screen_cli.DEMO_VOLUME, "-o", str(out), "--checkpoint", checkpoint, "--backend", backend,
                 "--device", "cpu", "--workers", "0", "--no-progress", "--no-montage"])
    assert code == 0
    return nib.load(str(out / "demo_ct_infection.nii.gz")).get_fdata()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


def test_onnxruntime_backend_matches_torch(tmp_path, tiny_checkpoint):
    reference = screen(tmp_path, tiny_checkpoint, "torch", "torch")
    assert reference.sum() > 0
    onnx_mask = screen(tmp_path, tiny_checkpoint, "onnxruntime", "ort")
    assert dice(reference, onnx_mask) >= 0.99
    # the exported model is cached inside the output folder and reused
    assert any(f.endswith(".onnx") for f in os.listdir(tmp_path / "ort" / ".covseg_cache"))


@pytest.mark.compile
@pytest.mark.slow
def test_compile_backend_matches_torch(tmp_path, tiny_checkpoint):
    assert dice(screen(tmp_path, tiny_checkpoint, "torch", "torch"),
                screen(tmp_path, tiny_checkpoint, "compile", "compiled")) >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(screen_cli.DEMO_CHECKPOINT), reason="demo checkpoint not shipped")
def test_demo_checkpoint_onnxruntime_matches_torch(tmp_path):
    reference = screen(tmp_path, screen_cli.DEMO_CHECKPOINT, "torch", "torch")
    assert dice(reference, screen(tmp_path, screen_cli.DEMO_CHECKPOINT, "onnxruntime", "ort")) >= 0.99


def test_tensorrt_backend_needs_a_gpu(tmp_path, tiny_checkpoint, caplog):
    code = main(["screen", screen_cli.DEMO_VOLUME, "-o", str(tmp_path / "trt"), "--checkpoint", tiny_checkpoint,
                 "--backend", "tensorrt", "--device", "cpu", "--workers", "0", "--no-progress"])
    assert code == 2
    assert "--backend tensorrt" in caplog.text and "CUDA device" in caplog.text
