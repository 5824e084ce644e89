"""Inference runners for exported models, with one call signature: ``runner(x) -> logits``.

``x`` is a float32 torch tensor (B, C, H, W) already prepared for the model
(registry.prepare_input); the result is a torch tensor of logits on x's device.
"""
from __future__ import annotations

import numpy as np
import torch


class OnnxRuntimeRunner:
    """Runs an ONNX file with onnxruntime (CPU, or CUDA when ``device='cuda'`` and onnxruntime-gpu is installed)."""

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from exc
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1  # one graph runs at a time (ORT_SEQUENTIAL): no second pool
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as exc:
            raise RuntimeError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)
