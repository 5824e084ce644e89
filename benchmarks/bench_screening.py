"""End-to-end screening throughput vs the model-only inference rate, on the real CT volumes.

Run (CPU, a few volumes, < 1 min on 2 cores):
    COVSEG_SHARED_DATA=/path/to/shared/data OMP_NUM_THREADS=1 \\
    python -m pytest benchmarks/bench_screening.py --benchmark-json benchmarks/results/screening_cpu.json
On CUDA the real volumes are repeated to ≥ 100 volumes (COVSEG_BENCH_VOLUMES overrides the count).
Without the data folder the packaged demo volume (real CT, 128×128×64) is repeated instead.

Providers (same model, same batch size, same slices, same run):
- ``model_only``: the model on pre-staged, pre-resized device batches (the ceiling);
- ``screen``: the whole `covseg screen` pipeline (decode in workers, lung mask, device windowing and
  resizing, batched inference, write-back of masks/montages/JSON).
The result is volumes/min and slices/s for both and ``screen / model_only`` (the issue's target on an
H100: ≥ 0.85), plus the pipeline's stage account (``stages`` in extra_info: busy seconds of decode,
device, inference, postprocess and write, the inference loop's starved / back-pressure / drain waits,
and the bottleneck). ``COVSEG_BENCH_WRITERS`` sets the writer threads (default min(4, CPUs)). The model is ``COVSEG_BENCH_MODEL`` (a registered name, random weights: speed only) or,
by default, ``bench_convnet`` defined here: 6 conv layers of 32 channels at 352×352 on CUDA, 4 conv
layers of 16 channels at 128×128 on CPU (so the CPU run stays short).
"""
from __future__ import annotations

import os
import shutil
import time

import torch
from torch import nn

from conftest import environment, synchronize
from covseg_fast.inference.batch import screen_batch
from covseg_fast.inference.screener import ScreenConfig, Screener, default_writers
from covseg_fast.io import discover, read_case
from covseg_fast.models.registry import ModelSpec, get_model, get_spec, prepare_input, register_model

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
REAL = ["ct/lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz", "ct/lung_pet_ct_dx_A0001/dicom",
        "ct/cip_copdgene_ct64/ct-64_LPS.nii.gz", "ct/totalseg_ct_cropped/ct_cropped.nii.gz"]


class BenchConvNet(nn.Module):
    """6 × (conv3×3 → ReLU) at 32 channels, then a 1×1 conv to one logit map."""

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 6):
        super().__init__()
        layers, c = [], in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        return self.head(self.body(x))


def _bench_convnet(**config) -> BenchConvNet:
    return BenchConvNet(**({"width": 32, "depth": 6} if CUDA else {"width": 16, "depth": 4}), **config)


register_model(ModelSpec(name="bench_convnet", builder=_bench_convnet, criterion=lambda **_: None,
                         in_channels=3, input_size=(352, 352) if CUDA else (128, 128),
                         description="benchmark-only conv net"))


def _sources() -> list[str]:
    """The real volumes of ../shared/data (COVSEG_SHARED_DATA), else the packaged demo volume (real CT,
    downsampled) so the benchmark also runs on a machine without the data folder."""
    d = os.environ.get("COVSEG_SHARED_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    if os.path.isdir(d):
        return [os.path.join(d, r) for r in REAL]
    from covseg_fast.cli.screen import DEMO_VOLUME

    return [DEMO_VOLUME]


def _inputs(tmp_path, n_volumes: int) -> list[str]:
    """``n_volumes`` inputs cycling over the real volumes (symlinked copies: distinct case ids)."""
    real = _sources()
    items = []
    for i in range(n_volumes):
        src = real[i % len(real)]
        name = f"v{i:04d}_" + (os.path.basename(src) if not os.path.isdir(src) else "dicom")
        dst = tmp_path / "in" / name
        dst.parent.mkdir(exist_ok=True)
        os.symlink(src, dst)
        items.append(str(dst))
    return items


def test_screening_throughput(benchmark, tmp_path):
    n = int(os.environ.get("COVSEG_BENCH_VOLUMES", "100" if CUDA else "4"))
    batch = int(os.environ.get("COVSEG_BENCH_BATCH", "32" if CUDA else "16"))
    workers = int(os.environ.get("COVSEG_BENCH_WORKERS", str(min(8, os.cpu_count() or 1)) if CUDA else "1"))
    writers = int(os.environ.get("COVSEG_BENCH_WRITERS", str(default_writers())))
    name = os.environ.get("COVSEG_BENCH_MODEL", "bench_convnet")
    torch.manual_seed(0)
    model = get_model(name).eval()
    spec = get_spec(name)
    inputs = _inputs(tmp_path, n)
    cases, _ = discover(inputs)
    assert len(cases) == n

    # model-only ceiling: the same slices, pre-staged on the device, same batches
    cfg = ScreenConfig(out_dir=str(tmp_path / "out"), batch_size=batch, workers=workers, device=DEVICE,
                       writers=writers, progress=False)
    scr = Screener(model, spec, cfg, {"model": name})
    uniq = {}
    for c in cases[: len(_sources())]:
        x, _ = scr.to_model_slices(read_case(c.path, c.kind).data)
        uniq[c.path] = x
    staged = torch.cat([uniq[cases[i % len(uniq)].path] for i in range(min(n, len(uniq)))])
    n_slices_total = sum(uniq[cases[i % len(uniq)].path].shape[0] for i in range(n))
    scr._infer(staged[:batch])  # warm-up
    synchronize(DEVICE)
    t0 = time.perf_counter()
    done = 0
    while done < n_slices_total:
        for s in range(0, staged.shape[0], batch):
            scr._infer(staged[s:s + batch])
            done += min(batch, staged.shape[0] - s)
            if done >= n_slices_total:
                break
    synchronize(DEVICE)
    model_only_s = time.perf_counter() - t0
    model_sps = n_slices_total / model_only_s

    def run_once():
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        return screen_batch(inputs, lambda: Screener(model, spec, cfg, {"model": name}), cfg)

    code, res, summary = benchmark.pedantic(run_once, rounds=1, iterations=1)
    # check the output after timing: every case written, slice count right, masks on the input grids
    assert code == 0 and len(res.records) == n and res.slices == n_slices_total
    assert all(os.path.isfile(tmp_path / "out" / f"{c.case_id}_infection.nii.gz") for c in cases)
    e2e_sps = res.slices / summary["wall_s"]
    benchmark.extra_info.update(environment())
    benchmark.extra_info.update({
        "provider": "screen vs model_only", "model": name, "input_size": list(spec.input_size),
        "batch_size": batch, "workers": workers, "writers": writers, "volumes": n, "slices": n_slices_total,
        "screen_volumes_per_min": 60 * n / summary["wall_s"], "screen_slices_per_s": e2e_sps,
        "model_only_slices_per_s": model_sps, "model_only_volumes_per_min": 60 * n / model_only_s,
        "screen_over_model_only": e2e_sps / model_sps, "stages": summary["stages"],
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if CUDA else None})
    print(f"\n[bench_screening] {DEVICE}: {n} volumes, {n_slices_total} slices, model {name} "
          f"{tuple(spec.input_size)}, batch {batch}, workers {workers}, writers {writers}\n"
          f"  screen end to end: {60 * n / summary['wall_s']:.1f} volumes/min, {e2e_sps:.1f} slices/s\n"
          f"  model only:        {60 * n / model_only_s:.1f} volumes/min, {model_sps:.1f} slices/s\n"
          f"  ratio screen / model-only: {e2e_sps / model_sps:.2f}\n"
          f"  {summary['stage_line']}")
