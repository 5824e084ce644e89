"""Build a TensorRT engine from an exported ONNX file, and run it on torch CUDA tensors.

Needs the ``tensorrt`` Python package, TensorRT 10.x (≥ 10.0: opset-18 graphs, see trt_supported_ops.py,
and the name-based tensor API; TensorRT 11 removed the fp16/bf16 builder flags used here), and a CUDA GPU;
everything else in covseg_fast works without it. Build settings are written next to the engine as JSON,
including the GPU it was built for: an engine only runs on the same GPU model and TensorRT version, and
:class:`TensorRTRunner` says so instead of crashing.

Calls follow the TensorRT 10 Python API (``Builder.create_network(0)``, ``OnnxParser.parse_from_file``,
``IBuilderConfig.create_timing_cache``/``set_timing_cache``/``get_timing_cache``,
``IOptimizationProfile.set_shape``, ``Builder.build_serialized_network``, ``ICudaEngine.get_tensor_*``,
``IExecutionContext.set_input_shape``/``set_tensor_address``/``execute_async_v3``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Optional

import torch

from ..atomic import atomic_write

log = logging.getLogger(__name__)
MIN_TENSORRT_MAJOR = 10
PRECISIONS = ("fp32", "fp16", "bf16")
INSTALL_HINT = ('pip install "tensorrt-cu12>=10,<11" (NVIDIA\'s wheels; tensorrt-cu13 for CUDA 13, matching '
                "torch.version.cuda)")


def import_tensorrt():
    """The tensorrt module (TensorRT ≥ 10), or a RuntimeError that says what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(f"TensorRT is not installed: {INSTALL_HINT}, on a machine with an NVIDIA GPU") from exc
    version = getattr(trt, "__version__", "0")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TENSORRT_MAJOR:
        raise RuntimeError(f"TensorRT {version} is too old: covseg needs TensorRT ≥ {MIN_TENSORRT_MAJOR}.0 "
                           f"(opset-18 ONNX graphs, name-based tensor API): {INSTALL_HINT}")
    return trt


def gpu_identity() -> tuple[str, str]:
    """(name, compute capability "major.minor") of the current CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU; none is visible to torch")
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    onnx_sha256: str = ""
    tensorrt: str = ""
    gpu: str = ""
    compute_capability: str = ""
    build_seconds: float = 0.0
    timing_cache: Optional[str] = None


def _precision_flag(trt, precision: str):
    if precision == "fp32":
        return None
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is None:
        raise RuntimeError(f"TensorRT {trt.__version__} has no BuilderFlag.{precision.upper()} (TensorRT 11 removed the "
                           f"fp16/bf16 builder flags): build with --precision fp32, or use TensorRT 10.x for "
                           f"{precision}")
    return flag


def _attach_timing_cache(trt, config, path: Optional[str]) -> None:
    """Give ``config`` the timing cache stored at ``path`` (or a new one); one that TensorRT rejects (another
    GPU or TensorRT version) is replaced by a new one, which the build then writes back to ``path``."""
    blob = b""
    if path and os.path.isfile(path):
        with open(path, "rb") as fh:
            blob = fh.read()
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        if blob:
            log.info("using the timing cache %s (%d bytes)", path, len(blob))
        return
    if blob:
        log.warning("TensorRT rejected the timing cache %s (built on another GPU or TensorRT version?); "
                    "starting a new one", path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError("TensorRT could not create a timing cache")


def build_engine(onnx_path: str, engine_path: str, *, precision: str = "fp16", min_batch: int = 1,
                 opt_batch: int = 16, max_batch: int = 32, height: int = 256, width: int = 256,
                 channels: int = 1, workspace_gib: float = 4.0, timing_cache: Optional[str] = None) -> EngineSettings:
    """Parse ``onnx_path`` and build a serialized engine with one optimisation profile: batch
    ``min_batch..max_batch`` (tuned for ``opt_batch``) at a fixed (channels, height, width).

    ``timing_cache``: a file read before the build (when present) and rewritten after it.

    Raises:
        ValueError: unknown precision, inconsistent batch sizes, or a graph input of another channel count.
        RuntimeError: TensorRT missing or too old, no GPU, precision flag missing (TensorRT 11), the parser
            rejects the graph (its errors are listed), or the build fails.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 ≤ min_batch ≤ opt_batch ≤ max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    if min(height, width, channels) < 1:
        raise ValueError(f"need positive channels, height and width, got {channels}, {height}, {width}")
    trt = import_tensorrt()
    flag = _precision_flag(trt, precision)
    gpu, capability = gpu_identity()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: " + ("; ".join(errors) or "no error reported"))
    if network.num_inputs != 1:
        raise RuntimeError(f"{onnx_path}: expected one input, the graph has {network.num_inputs}")
    image = network.get_input(0)
    shape = tuple(image.shape)
    if len(shape) != 4 or shape[1] not in (-1, channels):
        raise ValueError(f"{onnx_path}: input {image.name!r} has shape {shape}, expected (batch, {channels}, H, W)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if flag is not None:
        config.set_flag(flag)
    _attach_timing_cache(trt, config, timing_cache)
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, (min_batch, channels, height, width), (opt_batch, channels, height, width),
                      (max_batch, channels, height, width))
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    seconds = time.perf_counter() - start
    with atomic_write(engine_path) as fh:
        fh.write(bytes(serialized))
    if timing_cache:
        with atomic_write(timing_cache) as fh:
            fh.write(bytes(config.get_timing_cache().serialize()))
    settings = EngineSettings(onnx=os.path.abspath(onnx_path), precision=precision, min_batch=min_batch,
                              opt_batch=opt_batch, max_batch=max_batch, height=height, width=width,
                              channels=channels, workspace_gib=workspace_gib, onnx_sha256=file_sha256(onnx_path),
                              tensorrt=trt.__version__, gpu=gpu, compute_capability=capability,
                              build_seconds=seconds, timing_cache=timing_cache)
    with atomic_write(engine_path + ".json", "w") as fh:
        json.dump(dataclasses.asdict(settings), fh, indent=1)
    return settings


class TensorRTRunner:
    """Executes an engine on torch CUDA tensors (no host copies): ``runner(x) -> logits``.

    Raises at construction a RuntimeError naming the problem when TensorRT is missing, the engine was built
    for another GPU or TensorRT version, or the file is not an engine; at call a ValueError when the input
    is outside the engine's optimisation profile (e.g. more slices than its max batch) or not on CUDA.
    """

    def __init__(self, engine_path: str):
        trt = import_tensorrt()
        gpu, capability = gpu_identity()
        self.path = engine_path
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
            if self.settings.get("gpu") not in (None, "", gpu):
                log.warning("%s was built on %s, this is %s (same compute capability): it may run slower",
                            engine_path, self.settings["gpu"], gpu)
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
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)
        self._trt = trt

    @property
    def max_batch(self) -> int:
        return self.max_shape[0]

    def check_input(self, shape: tuple) -> None:
        """ValueError unless ``shape`` fits the engine's optimisation profile."""
        shape = tuple(shape)
        if len(shape) == len(self.max_shape) and shape[1:] == self.max_shape[1:] and shape[0] > self.max_batch:
            raise ValueError(f"a batch of {shape[0]} is more than {self.path} was built for (max batch "
                             f"{self.max_batch}): pass at most {self.max_batch} slices, or rebuild the engine "
                             "with a larger --max-batch")
        if len(shape) != len(self.max_shape) or any(not lo <= s <= hi for s, lo, hi in
                                                    zip(shape, self.min_shape, self.max_shape)):
            raise ValueError(f"input of shape {shape} is outside the optimisation profile of {self.path} "
                             f"({self.min_shape} .. {self.max_shape})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(tuple(x.shape))
        if x.device.type != "cuda":
            raise ValueError("TensorRTRunner: input must be a CUDA tensor")
        dtype = self._torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        x = x.to(dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise RuntimeError(f"TensorRT rejected the input shape {tuple(x.shape)}")
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
