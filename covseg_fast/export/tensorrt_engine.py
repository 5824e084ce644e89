"""Build a TensorRT engine from an exported ONNX file, and run it on torch CUDA tensors.

Needs the ``tensorrt`` Python package (TensorRT ≥ 10, name-based tensor API) and a CUDA GPU;
everything else in covseg_fast works without it. Build settings are written next to the
engine as JSON, including the GPU it was built for: an engine only runs on the same GPU
model and TensorRT version, and :class:`TensorRTRunner` says so instead of crashing.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Optional

import torch

from ..atomic import atomic_write

log = logging.getLogger(__name__)


def import_tensorrt():
    """The tensorrt module, or a RuntimeError that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(
            "TensorRT is not installed: `pip install tensorrt` (NVIDIA's wheels, matching your CUDA major "
            "version, e.g. tensorrt-cu12 / tensorrt-cu13) on a machine with an NVIDIA GPU"
        ) from exc
    return trt


@dataclasses.dataclass
class EngineSettings:
    """How an engine was built (saved as <engine>.json)."""

    onnx: str
    precision: str  # fp32 | fp16 | bf16
    min_batch: int
    opt_batch: int
    max_batch: int
    height: int
    width: int
    channels: int
    workspace_gib: float
    tensorrt: str = ""
    gpu: str = ""
    compute_capability: str = ""
    build_seconds: float = 0.0
    timing_cache: Optional[str] = None


def _gpu_identity() -> tuple[str, str]:
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU; none is visible to torch")
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def build_engine(onnx_path: str, engine_path: str, *, precision: str = "fp16", min_batch: int = 1,
                 opt_batch: int = 16, max_batch: int = 32, height: int = 256, width: int = 256,
                 channels: int = 1, workspace_gib: float = 4.0, timing_cache: Optional[str] = None) -> EngineSettings:
    """Parse ``onnx_path`` and build a serialized engine with one optimisation profile over the batch size.

    Raises:
        ValueError: unknown precision or inconsistent batch sizes.
        RuntimeError: TensorRT missing, no GPU, the parser rejects the graph (its errors are listed), or the
            build fails.
    """
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 ≤ min_batch ≤ opt_batch ≤ max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    trt = import_tensorrt()
    gpu, capability = _gpu_identity()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    cache_bytes = b""
    if timing_cache and os.path.isfile(timing_cache):
        with open(timing_cache, "rb") as fh:
            cache_bytes = fh.read()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (min_batch, channels, height, width), (opt_batch, channels, height, width),
                      (max_batch, channels, height, width))
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    with atomic_write(engine_path) as fh:
        fh.write(bytes(serialized))
    if timing_cache:
        with atomic_write(timing_cache) as fh:
            fh.write(bytes(config.get_timing_cache().serialize()))
    settings = EngineSettings(onnx=os.path.abspath(onnx_path), precision=precision, min_batch=min_batch,
                              opt_batch=opt_batch, max_batch=max_batch, height=height, width=width,
                              channels=channels, workspace_gib=workspace_gib, tensorrt=trt.__version__, gpu=gpu,
                              compute_capability=capability, build_seconds=time.perf_counter() - start,
                              timing_cache=timing_cache)
    with atomic_write(engine_path + ".json", "w") as fh:
        json.dump(dataclasses.asdict(settings), fh, indent=1)
    return settings


class TensorRTRunner:
    """Executes an engine on torch CUDA tensors (no host copies): ``runner(x) -> logits``.

    Raises at construction a RuntimeError naming the problem when TensorRT is missing, the engine was built
    for another GPU or TensorRT version, or the file is not an engine.
    """

    def __init__(self, engine_path: str):
        trt = import_tensorrt()
        gpu, capability = _gpu_identity()
        settings_path = engine_path + ".json"
        if os.path.isfile(settings_path):
            with open(settings_path) as fh:
                self.settings = json.load(fh)
            built_for = (self.settings.get("compute_capability"), self.settings.get("tensorrt"))
            if built_for != (capability, trt.__version__):
                raise RuntimeError(
                    f"{engine_path} was built for compute capability {built_for[0]} with TensorRT {built_for[1]}; "
                    f"this is {gpu} (capability {capability}) with TensorRT {trt.__version__}: rebuild it with "
                    "`covseg export --format tensorrt`")
        else:
            self.settings = {}
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as fh:
            self.engine = self.runtime.deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: not a TensorRT engine for this GPU/TensorRT version")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._trt = trt

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError("TensorRTRunner: input must be a CUDA tensor")
        dtype = self._torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        x = x.to(dtype).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(out_shape, device=x.device,
                          dtype=self._torch_dtype(self.engine.get_tensor_dtype(self.output_name)))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(x.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out.float()

    def _torch_dtype(self, trt_dtype) -> torch.dtype:
        trt = self._trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
        return table[trt_dtype]
