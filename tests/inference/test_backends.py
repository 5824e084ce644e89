"""`covseg screen --backend`: torch, torch.compile and onnxruntime give the same masks (Dice ≥ 0.99), on the
demo volume and on the real CT volumes; the TensorRT backend's engine follows --batch-size and is cached per
batch profile, precision, GPU, TensorRT version and ONNX file (checked with the fake ``tensorrt`` module of
tests/export/fake_tensorrt.py, which checks our use of the TensorRT API, not TensorRT)."""
import csv
import json
import logging
import os
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from covseg_fast.cli import screen as screen_cli
from covseg_fast.cli.main import main
from covseg_fast.export import tensorrt_engine as te
from covseg_fast.inference import backends
from covseg_fast.inference.backends import RunnerModule, engine_key, make_backend, resolve_backend
from covseg_fast.models import load_model
from tests.conftest import SHARED_DATA
from tests.export.fake_tensorrt import calls_named, make_module

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


def test_auto_resolves_to_the_fastest_installed_backend(monkeypatch):
    have = set()
    monkeypatch.setattr(backends, "_installed", lambda module: module in have)
    assert resolve_backend("auto", "cpu").name == "torch" and "not installed" in resolve_backend("auto", "cpu").reason
    have |= {"onnxruntime", "onnx", "onnxscript"}
    assert resolve_backend("auto", "cpu") == backends.BackendChoice("onnxruntime", "auto: CPU and onnxruntime installed",
                                                                     True)
    assert resolve_backend("auto", "cuda:0").name == "torch"
    have.add("triton")
    assert resolve_backend("auto", "cuda:0").name == "compile"
    have.add("tensorrt")
    assert resolve_backend("auto", "cuda:0").name == "tensorrt"
    assert resolve_backend("torch", "cuda:0") == backends.BackendChoice("torch", "as asked (--backend)")
    assert screen_cli.BACKEND_CHOICES == backends.CHOICES


@pytest.mark.default_backend
def test_default_backend_is_auto_and_every_report_says_what_ran(tmp_path, tiny_checkpoint, caplog):
    out = tmp_path / "auto"
    caplog.set_level(logging.INFO)
    assert main(["screen", screen_cli.DEMO_VOLUME, "-o", str(out), "--checkpoint", tiny_checkpoint, "--device", "cpu",
                 "--threads", "1", "--workers", "0", "--no-progress", "--no-montage"]) == 0
    record = json.loads((out / "demo_ct.json").read_text())
    assert (record["backend"], record["threads"], record["device"]) == ("onnxruntime", 1, "cpu")
    assert record["backend_reason"].startswith("auto:")
    row = next(csv.DictReader(open(out / "summary.csv")))
    assert (row["backend"], row["threads"], row["device"]) == ("onnxruntime", "1", "cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"][0]["backend"] == "onnxruntime"
    start = next(r.getMessage() for r in caplog.records if "inference thread" in r.getMessage())
    assert "device cpu" in start and "backend onnxruntime" in start and "1 inference thread" in start
    assert "model tiny_screen_test" in start


def test_onnxruntime_gets_the_thread_count_asked_for(tmp_path, tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    runner = make_backend(model, "onnxruntime", "cpu", str(tmp_path), threads=1).runner
    options = runner.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


@pytest.mark.default_backend
def test_auto_falls_back_to_torch_when_its_choice_cannot_start(tmp_path, tiny_checkpoint, monkeypatch, caplog):
    def broken(model, backend, *args, **kwargs):
        if backend != "torch":
            raise RuntimeError("simulated export failure")
        return model

    monkeypatch.setattr(backends, "make_backend", broken)
    out = tmp_path / "fallback"
    assert main(["screen", screen_cli.DEMO_VOLUME, "-o", str(out), "--checkpoint", tiny_checkpoint, "--device", "cpu",
                 "--workers", "0", "--no-progress", "--no-montage"]) == 0
    assert json.loads((out / "demo_ct.json").read_text())["backend"] == "torch"
    assert "--backend auto: onnxruntime cannot run here (simulated export failure); using eager torch" in caplog.text
    # a backend the user named is not replaced: a usage error
    assert main(["screen", screen_cli.DEMO_VOLUME, "-o", str(tmp_path / "named"), "--checkpoint", tiny_checkpoint,
                 "--device", "cpu", "--backend", "onnxruntime", "--workers", "0", "--no-progress"]) == 2


@pytest.mark.skipif(not os.path.isfile(screen_cli.DEMO_CHECKPOINT), reason="demo checkpoint not shipped")
def test_eager_cpu_runs_channels_last_with_the_same_logits(tmp_path):
    model = load_model(screen_cli.DEMO_CHECKPOINT).eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        reference = model(x)
        run = make_backend(model, "torch", "cpu", str(tmp_path))
        assert isinstance(run, backends.ChannelsLast) and run.covseg_name == model.covseg_name
        got = run(x)
    assert torch.allclose(got.float(), reference.float(), atol=1e-4, rtol=1e-4)


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


# The real CT volumes of ../shared/data/ct (no COVID labels; the demo model still marks some voxels). To stay
# near 2 minutes on one core (export ~40 s, 256² MSA-UNet inference twice), the TotalSegmentator crop is cut to
# its central TOTALSEG_SLICES of 164 slices; the other two volumes are screened whole.
REAL_CT = {"ct-64_LPS": "cip_copdgene_ct64/ct-64_LPS.nii.gz",
           "Lung_Dx-A0001_5mm_kernelL_LPS": "lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz"}
TOTALSEG = "totalseg_ct_cropped/ct_cropped.nii.gz"
TOTALSEG_SLICES = 40


# How far onnxruntime may differ from eager torch: both run the same fp32 graph, but onnxruntime fuses and
# reorders the convolutions' sums, so probabilities differ by float rounding (max |Δp| ≈ 4e-6 on the export's
# own check, 25× that = 1e-4 allowed). The probability maps screen writes are uint8 with a scale factor (one
# step = scl_slope ≈ 1/255), so two values that close can land one step apart: allowed |Δp| on the files is
# one step + 1e-4. A mask voxel may differ only where torch's probability lies within that of the threshold
# (a rounding difference deciding a near-tie), and nowhere else.
FLOAT_TOL = 1e-4


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(screen_cli.DEMO_CHECKPOINT), reason="demo checkpoint not shipped")
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "ct")),
                    reason=f"real CT volumes not found at {os.path.join(SHARED_DATA, 'ct')} (../shared beside the checkout)")
def test_real_volumes_onnxruntime_matches_torch(tmp_path):
    ct = os.path.join(SHARED_DATA, "ct")
    inputs = [os.path.join(ct, rel) for rel in REAL_CT.values()]
    image = nib.load(os.path.join(ct, TOTALSEG))
    start = (image.shape[2] - TOTALSEG_SLICES) // 2
    middle = str(tmp_path / "ct_cropped_mid.nii.gz")
    nib.save(image.slicer[:, :, start:start + TOTALSEG_SLICES], middle)  # slicer keeps the geometry right
    inputs.append(middle)
    masks, probs = {}, {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        assert main(["screen", *inputs, "-o", str(out), "--checkpoint", screen_cli.DEMO_CHECKPOINT, "--backend",
                     backend, "--device", "cpu", "--workers", "0", "--no-progress", "--no-montage",
                     "--save-probabilities"]) == 0
        cases = [*REAL_CT, "ct_cropped_mid"]
        masks[backend] = {c: np.asarray(nib.load(str(out / f"{c}_infection.nii.gz")).dataobj) > 0 for c in cases}
        probs[backend] = {c: nib.load(str(out / f"{c}_probabilities.nii.gz")) for c in cases}
    assert any(m.any() for m in masks["torch"].values()), "the demo model marks nothing: the test compares nothing"
    for case, reference in masks["torch"].items():
        got = masks["onnxruntime"][case]
        assert got.shape == reference.shape
        step = float(probs["torch"][case].dataobj.slope)
        p_ref = np.asarray(probs["torch"][case].get_fdata(dtype=np.float32))
        delta = float(np.abs(probs["onnxruntime"][case].get_fdata(dtype=np.float32) - p_ref).max())
        assert delta <= step + FLOAT_TOL, f"{case}: max |Δ probability| {delta:.2e} > one step {step:.2e} + {FLOAT_TOL:g}"
        differ = got != reference
        near_threshold = np.abs(p_ref - 0.5) <= step + FLOAT_TOL
        assert not (differ & ~near_threshold).any(), (
            f"{case}: {int((differ & ~near_threshold).sum())} mask voxels differ where torch's probability is "
            f"farther than one probability step + {FLOAT_TOL:g} ({step + FLOAT_TOL:.2e}) from the threshold")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
@pytest.mark.skipif(not os.path.isfile(screen_cli.DEMO_CHECKPOINT), reason="demo checkpoint not shipped")
def test_tensorrt_backend_matches_torch_with_a_large_batch(tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (see tests/export/test_tensorrt.py)")
    masks = {}
    for backend in ("torch", "tensorrt"):
        out = tmp_path / backend
        assert main(["screen", screen_cli.DEMO_VOLUME, "-o", str(out), "--checkpoint", screen_cli.DEMO_CHECKPOINT,
                     "--backend", backend, "--device", "cuda", "--batch-size", "48", "--workers", "0",
                     "--no-progress", "--no-montage"]) == 0
        masks[backend] = nib.load(str(out / "demo_ct_infection.nii.gz")).get_fdata() > 0
    assert masks["torch"].any() and dice(masks["torch"], masks["tensorrt"]) >= 0.99
    assert [f for f in os.listdir(tmp_path / "tensorrt" / ".covseg_cache") if f.endswith(".engine")]


def test_tensorrt_backend_needs_a_gpu(tmp_path, tiny_checkpoint, caplog):
    code = main(["screen", screen_cli.DEMO_VOLUME, "-o", str(tmp_path / "trt"), "--checkpoint", tiny_checkpoint,
                 "--backend", "tensorrt", "--device", "cpu", "--workers", "0", "--no-progress"])
    assert code == 2
    assert "--backend tensorrt" in caplog.text and "CUDA device" in caplog.text


# ---------------------------------------------------------------- TensorRT engine cache (fake tensorrt)

def install_fake_tensorrt(monkeypatch, **kwargs):
    trt = make_module(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "gpu_identity", lambda: (trt.fake.gpu, trt.fake.capability))
    return trt


def engines(cache) -> list:
    return sorted(p for p in os.listdir(cache) if p.endswith(".engine"))


def test_tensorrt_engine_follows_batch_size_and_is_rebuilt_when_its_settings_change(monkeypatch, tmp_path,
                                                                                    tiny_checkpoint):
    model, cache = load_model(tiny_checkpoint), str(tmp_path / "cache")
    trt = install_fake_tensorrt(monkeypatch)
    module = make_backend(model, "tensorrt", "cuda", cache, batch_size=64)
    assert isinstance(module, RunnerModule) and module.max_batch == 64 == module.runner.max_batch
    # the profile covers batches 1..--batch-size at the model's input size; bf16
    (name, lo, opt, hi), _ = calls_named(trt, "IOptimizationProfile.set_shape")[0]
    assert (lo, opt, hi) == ((1, 1, 64, 64), (64, 1, 64, 64), (64, 1, 64, 64))
    assert [repr(a[0]) for a, _ in calls_named(trt, "IBuilderConfig.set_flag")] == ["BuilderFlag.BF16"]
    first = engines(cache)
    assert len(first) == 1 and os.path.isfile(os.path.join(cache, "tensorrt.timing-cache"))

    make_backend(model, "tensorrt", "cuda", cache, batch_size=64)  # same settings: the cached engine
    assert len(trt.fake.builds) == 1 and engines(cache) == first

    make_backend(model, "tensorrt", "cuda", cache, batch_size=128)  # another batch size: a new engine
    assert trt.fake.builds[-1]["profile"]["image"][2] == (128, 1, 64, 64)
    assert len(trt.fake.builds) == 2 and len(engines(cache)) == 2

    # another GPU (or TensorRT version): rebuilt for it, where a reused engine would be refused
    a100 = install_fake_tensorrt(monkeypatch, gpu="NVIDIA A100-SXM4-80GB", capability="8.0")
    assert make_backend(model, "tensorrt", "cuda", cache, batch_size=64).runner.max_batch == 64
    assert len(a100.fake.builds) == 1 and len(engines(cache)) == 3
    newer = install_fake_tensorrt(monkeypatch, version="10.4.0")
    make_backend(model, "tensorrt", "cuda", cache, batch_size=64)
    assert len(newer.fake.builds) == 1 and len(engines(cache)) == 4


def test_engine_key_covers_every_setting():
    base = dict(max_batch=16, opt_batch=16, size=(256, 256), channels=3, precision="bf16", gpu="NVIDIA H100",
                capability="9.0", tensorrt="10.3.0")
    key = engine_key("a" * 64, **base)
    assert engine_key("b" * 64, **base) != key  # the ONNX file
    changed = dict(max_batch=32, opt_batch=8, size=(128, 128), channels=1, precision="fp16", gpu="NVIDIA A100",
                   capability="8.0", tensorrt="10.4.0")
    for field, value in changed.items():
        assert engine_key("a" * 64, **{**base, field: value}) != key, field


def test_damaged_cached_engine_is_rebuilt(monkeypatch, tmp_path, tiny_checkpoint, caplog):
    model, cache = load_model(tiny_checkpoint), str(tmp_path / "cache")
    trt = install_fake_tensorrt(monkeypatch)
    make_backend(model, "tensorrt", "cuda", cache, batch_size=8)
    (engine,) = engines(cache)
    with open(os.path.join(cache, engine), "wb") as fh:
        fh.write(b"truncated")
    with caplog.at_level(logging.WARNING):
        make_backend(model, "tensorrt", "cuda", cache, batch_size=8)
    assert "is unusable" in caplog.text and len(trt.fake.builds) == 2 and engines(cache) == [engine]


def test_batches_over_the_engine_limit_run_in_chunks():
    sizes = []

    def runner(x):
        assert x.shape[0] <= 4
        sizes.append(x.shape[0])
        return x * 2

    x = torch.arange(10.0).reshape(10, 1, 1, 1)
    torch.testing.assert_close(RunnerModule(runner, "tensorrt", max_batch=4)(x), x * 2)
    assert sizes == [4, 4, 2]


def test_bad_batch_size_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        make_backend(load_model(tiny_checkpoint), "onnxruntime", "cpu", str(tmp_path), batch_size=0)
