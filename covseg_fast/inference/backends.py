"""Inference backends for screening: the same eval model through torch, torch.compile,
onnxruntime or TensorRT, each wrapped as a module whose ``forward(x)`` returns logits.

Exported backends are built once per run from the loaded model (ONNX with the reference
ops, see covseg_fast.export) into ``cache_dir`` and reused by later runs of the same checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)
BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")


class RunnerModule(nn.Module):
    """Wraps an exported-model runner (``runner(x) -> logits``) so the screener can treat it as a model."""

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor], name: str):
        super().__init__()
        self.runner = runner
        self.backend_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x.float())


def _artifact(model: nn.Module, cache_dir: str, suffix: str) -> str:
    state = json.dumps({"model": model.covseg_name, "config": model.covseg_config}, sort_keys=True)
    digest = hashlib.sha256(state.encode())
    for value in model.state_dict().values():
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return os.path.join(cache_dir, f"{model.covseg_name}-{digest.hexdigest()[:16]}{suffix}")


def make_backend(model: nn.Module, backend: str, device: str, cache_dir: str) -> nn.Module:
    """The module the screener calls for ``backend`` (one of BACKENDS).

    Raises:
        ValueError: unknown backend, or TensorRT asked for without a CUDA device.
        RuntimeError: the backend's runtime is missing (message says what to install).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "tensorrt" and not device.startswith("cuda"):
        raise ValueError("the tensorrt backend needs a CUDA device (--device cuda)")
    model = model.eval()
    if backend == "torch":
        return model
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
        return RunnerModule(OnnxRuntimeRunner(onnx_path, device=device), backend)
    from ..export.tensorrt_engine import TensorRTRunner, build_engine
    from ..models.registry import get_spec

    engine_path = _artifact(model, cache_dir, ".engine")
    if not os.path.isfile(engine_path):
        spec = get_spec(model.covseg_name)
        build_engine(onnx_path, engine_path, precision="bf16", height=spec.input_size[0], width=spec.input_size[1],
                     channels=spec.in_channels)
    return RunnerModule(TensorRTRunner(engine_path), backend)
