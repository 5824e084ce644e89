"""Inference backends for screening: the same eval model through torch, torch.compile,
onnxruntime or TensorRT, each wrapped as a module whose ``forward(x)`` returns logits.

Exported backends are built once per run from the loaded model (ONNX with the reference
ops, see covseg_fast.export) into ``cache_dir`` and reused by later runs of the same checkpoint.
A TensorRT engine is reused only when everything it depends on matches: its file name is a hash of
the ONNX file, the batch profile, the input size, the precision, the GPU (name and compute
capability) and the TensorRT version, so a change in any of them builds a new engine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
from typing import Callable, Optional, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)
BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")
CHOICES = ("auto", *BACKENDS)  # what --backend accepts
TENSORRT_PRECISION = "bf16"
DEFAULT_MAX_BATCH = 32  # TensorRT profile when the caller does not say its batch size


class RunnerModule(nn.Module):
    """Wraps an exported-model runner (``runner(x) -> logits``) so the screener can treat it as a model.

    ``max_batch``: the most rows the runner takes at once (a TensorRT profile); larger batches are run in
    chunks of that size.
    """

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor], name: str, max_batch: Optional[int] = None):
        super().__init__()
        self.runner = runner
        self.backend_name = name
        self.max_batch = max_batch
        self._warned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return self.runner(x)
        if not self._warned:
            log.warning("%s: batches of %d are run in chunks of %d (the engine's max batch); pass the batch size "
                        "to make_backend to build for it", self.backend_name, x.shape[0], self.max_batch)
            self._warned = True
        return torch.cat([self.runner(part) for part in x.split(self.max_batch)])


class ChannelsLast(nn.Module):
    """Runs ``model`` with its weights and each (B, C, H, W) input in channels_last memory format."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)
        for attr in ("covseg_name", "covseg_config"):  # the registry attributes pass through
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor):
        return self.model(x.contiguous(memory_format=torch.channels_last))


def _artifact(model: nn.Module, cache_dir: str, suffix: str) -> str:
    state = json.dumps({"model": model.covseg_name, "config": model.covseg_config}, sort_keys=True)
    digest = hashlib.sha256(state.encode())
    for value in model.state_dict().values():
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return os.path.join(cache_dir, f"{model.covseg_name}-{digest.hexdigest()[:16]}{suffix}")


def engine_key(onnx_sha256: str, *, max_batch: int, opt_batch: int, size: Sequence[int], channels: int,
               precision: str, gpu: str, capability: str, tensorrt: str) -> str:
    """The hash naming a cached TensorRT engine: everything the engine is only valid for."""
    fields = {"onnx_sha256": onnx_sha256, "max_batch": max_batch, "opt_batch": opt_batch, "size": list(size),
              "channels": channels, "precision": precision, "gpu": gpu, "compute_capability": capability,
              "tensorrt": tensorrt}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _tensorrt_backend(model: nn.Module, onnx_path: str, cache_dir: str, batch_size: Optional[int],
                      size: Optional[Sequence[int]]) -> nn.Module:
    from ..export import tensorrt_engine as te
    from ..models.registry import get_spec

    trt = te.import_tensorrt()
    gpu, capability = te.gpu_identity()
    spec = get_spec(model.covseg_name)
    h, w = size or spec.input_size
    max_batch = batch_size or DEFAULT_MAX_BATCH
    opt_batch = max_batch  # the screener sends full batches; only a run's last one is smaller
    key = engine_key(te.file_sha256(onnx_path), max_batch=max_batch, opt_batch=opt_batch, size=(h, w),
                     channels=spec.in_channels, precision=TENSORRT_PRECISION, gpu=gpu, capability=capability,
                     tensorrt=trt.__version__)
    engine_path = os.path.join(cache_dir, f"{model.covseg_name}-trt-{key}.engine")
    if os.path.isfile(engine_path) and os.path.isfile(engine_path + ".json"):
        try:
            return RunnerModule(te.TensorRTRunner(engine_path), "tensorrt", max_batch)
        except RuntimeError as exc:  # e.g. a damaged file: build it again
            log.warning("cached engine %s is unusable (%s); rebuilding it", engine_path, exc)
    log.info("building a TensorRT engine (%s, batch 1..%d, %dx%d) for %s on %s; cached as %s",
             TENSORRT_PRECISION, max_batch, h, w, model.covseg_name, gpu, engine_path)
    te.build_engine(onnx_path, engine_path, precision=TENSORRT_PRECISION, min_batch=1, opt_batch=opt_batch,
                    max_batch=max_batch, height=h, width=w, channels=spec.in_channels,
                    timing_cache=os.path.join(cache_dir, "tensorrt.timing-cache"))
    return RunnerModule(te.TensorRTRunner(engine_path), "tensorrt", max_batch)


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses, and why (``auto`` resolved, or as asked)."""

    name: str
    reason: str
    auto: bool = False


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backend(requested: str, device: str) -> BackendChoice:
    """``auto`` → the fastest backend installed for ``device``; anything else is taken as asked.

    CPU: onnxruntime (2.8× eager torch end to end on the shipped model, masks identical; benchmarks/README.md),
    when onnxruntime and the ONNX exporter (onnx, onnxscript) are installed, else torch. CUDA: TensorRT when
    installed, else torch.compile when Triton is, else eager torch.
    """
    if requested != "auto":
        return BackendChoice(requested, "as asked (--backend)")
    if device.startswith("cuda"):
        if _installed("tensorrt"):
            return BackendChoice("tensorrt", "auto: CUDA device and TensorRT installed", True)
        if _installed("triton"):
            return BackendChoice("compile", "auto: CUDA device, Triton installed, no TensorRT", True)
        return BackendChoice("torch", "auto: CUDA device, neither TensorRT nor Triton installed", True)
    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if not _installed(m)]
    if not missing:
        return BackendChoice("onnxruntime", "auto: CPU and onnxruntime installed", True)
    return BackendChoice("torch", f"auto: CPU, {', '.join(missing)} not installed (pip install "
                         "'covseg_fast[export]' for the faster onnxruntime backend)", True)


def make_backend(model: nn.Module, backend: str, device: str, cache_dir: str, *, batch_size: Optional[int] = None,
                 size: Optional[Sequence[int]] = None, threads: Optional[int] = None) -> nn.Module:
    """The module the screener calls for ``backend`` (one of BACKENDS).

    Args:
        batch_size: the largest batch the caller sends (``--batch-size``); the TensorRT engine is built for
            batches 1..batch_size (default 32; larger batches then run in chunks).
        size: (H, W) the caller sends to TensorRT (default: the model's input size).
        threads: onnxruntime's intra-op threads (default: onnxruntime's own choice, one per core).
    Raises:
        ValueError: unknown backend, TensorRT asked for without a CUDA device, or batch_size < 1.
        RuntimeError: the backend's runtime is missing (message says what to install) or cannot build.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "tensorrt" and not device.startswith("cuda"):
        raise ValueError("the tensorrt backend needs a CUDA device (--device cuda)")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    model = model.eval()
    if backend == "torch":
        # eager convolutions on a CPU run about 2× faster channels_last (benchmarks/results/cpu_layout_batch_*.json)
        return ChannelsLast(model) if device == "cpu" else model
    if backend == "compile":
        # CUDA graphs pay off for the small deep levels, which are launch-bound (KERNELS.md §9).
        mode = "max-autotune-no-cudagraphs" if device == "cpu" else "reduce-overhead"
        return torch.compile(model, mode=mode, dynamic=False)
    from ..export import OnnxRuntimeRunner, export_onnx

    onnx_path = _artifact(model, cache_dir, ".onnx")
    if not os.path.isfile(onnx_path):
        log.info("exporting %s to %s for the %s backend", model.covseg_name, onnx_path, backend)
        report = export_onnx(model, onnx_path)
        log.info("%s", report.summary())
    if backend == "onnxruntime":
        return RunnerModule(OnnxRuntimeRunner(onnx_path, device=device, threads=threads), backend)
    return _tensorrt_backend(model, onnx_path, cache_dir, batch_size, size)
