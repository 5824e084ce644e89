"""A small stand-in for the ``tensorrt`` module, for tests on machines without TensorRT or a GPU.

It implements only the TensorRT 10 Python calls covseg_fast makes, with their TensorRT 10 names and
parameter names (``Builder.create_network``, ``OnnxParser.parse_from_file``, ``IBuilderConfig.
create_timing_cache``/``set_timing_cache(cache, ignore_mismatch)``/``get_timing_cache``,
``IOptimizationProfile.set_shape(input, min, opt, max)``, ``Builder.build_serialized_network``,
``Runtime.deserialize_cuda_engine``, ``ICudaEngine.get_tensor_*``, ``IExecutionContext.set_input_shape``/
``get_tensor_shape``/``set_tensor_address``/``execute_async_v3``). Every call is recorded in
``module.fake.calls``, and the fake keeps just enough state to answer what the code asks back (the
profile an engine was built with, whether a timing cache was made on this "GPU").

It checks OUR USE of the API: the shapes, flags and files we pass and how we react to TensorRT's answers.
It says nothing about TensorRT itself (parsing, kernels, numerics); tests/export/test_tensorrt.py runs the
real thing where TensorRT and a GPU exist.
"""
from __future__ import annotations

import json
import types
from typing import Optional

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE\n"


class _Member:
    """An enum member (BuilderFlag.FP16, DataType.FLOAT, ...)."""

    def __init__(self, owner: str, name: str):
        self.owner, self.name = owner, name

    def __repr__(self) -> str:
        return f"{self.owner}.{self.name}"


def _enum(owner: str, *names: str) -> type:
    return type(owner, (), {n: _Member(owner, n) for n in names})


class _HostMemory(bytes):
    """IHostMemory: a buffer (``bytes(memory)`` gives its content)."""


class _ParserError:
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


def make_module(version: str = "10.3.0", *, gpu: str = "NVIDIA H100 80GB HBM3", capability: str = "9.0",
                precision_flags: bool = True) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module. ``precision_flags=False`` mimics TensorRT 11 (no FP16/BF16 flags).

    ``module.fake`` holds: ``calls`` (name, args) in order, ``gpu``/``capability`` (what the fake GPU is,
    for timing caches), ``fail_build`` (build_serialized_network returns None), ``builds`` (one dict per
    build: profile shapes, flags, workspace, timing-cache blob in).
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    fake = types.SimpleNamespace(calls=[], gpu=gpu, capability=capability, fail_build=False, builds=[])
    trt.fake = fake

    def record(name, *args, **kwargs):
        fake.calls.append((name, args, kwargs))

    flags = ("TF32", "REFIT") + (("FP16", "BF16") if precision_flags else ())
    trt.BuilderFlag = _enum("BuilderFlag", *flags)
    trt.MemoryPoolType = _enum("MemoryPoolType", "WORKSPACE")
    trt.TensorIOMode = _enum("TensorIOMode", "NONE", "INPUT", "OUTPUT")
    trt.DataType = _enum("DataType", "FLOAT", "HALF", "BF16")
    trt.float32, trt.float16, trt.bfloat16 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity=2):
            self.min_severity = min_severity

    class ITensor:
        def __init__(self, name: str, shape: tuple, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    class INetworkDefinition:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list = []
            self.outputs: list = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int):
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors: list = []

        def parse_from_file(self, model: str) -> bool:
            import onnx

            record("OnnxParser.parse_from_file", model)
            try:
                proto = onnx.load(model)
            except Exception as exc:
                self.errors.append(_ParserError(f"ModelImporter: failed to parse the ONNX model: {exc}"))
                return False
            for value in proto.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                self.network.inputs.append(ITensor(value.name, dims, trt.float32))
            self.network.outputs = [ITensor(v.name, (), trt.float32) for v in proto.graph.output]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int):
            return self.errors[index]

    class ITimingCache:
        def __init__(self, gpu_: str, entries: int):
            self.gpu, self.entries = gpu_, entries

        def serialize(self):
            return _HostMemory(CACHE_MAGIC + json.dumps({"gpu": self.gpu, "entries": self.entries}).encode())

    class IOptimizationProfile:
        def __init__(self):
            self.shapes: dict = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 (TensorRT's parameter names)
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            if not len(min) == len(opt) == len(max) or any(not a <= b <= c for a, b, c in zip(min, opt, max)):
                raise ValueError("Shape provided for min/opt/max is inconsistent")
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class IBuilderConfig:
        def __init__(self):
            self.flags: set = set()
            self.pools: dict = {}
            self.profiles: list = []
            self.timing_cache: Optional[ITimingCache] = None
            self.timing_cache_blob: Optional[bytes] = None

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)
            self.pools[pool] = pool_size

        def set_flag(self, flag) -> None:
            record("IBuilderConfig.set_flag", flag)
            self.flags.add(flag)

        def create_timing_cache(self, serialized_timing_cache):
            blob = bytes(serialized_timing_cache)
            record("IBuilderConfig.create_timing_cache", blob)
            if not blob:
                return ITimingCache(fake.gpu, 0)
            if not blob.startswith(CACHE_MAGIC):
                return None  # TensorRT reports an invalid blob and returns no cache
            content = json.loads(blob[len(CACHE_MAGIC):])
            return ITimingCache(content["gpu"], content["entries"])

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            record("IBuilderConfig.set_timing_cache", cache, ignore_mismatch=ignore_mismatch)
            if cache.gpu != fake.gpu and not ignore_mismatch:
                return False  # made on another device
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

        def add_optimization_profile(self, profile) -> int:
            record("IBuilderConfig.add_optimization_profile", profile)
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags: int = 0):
            record("Builder.create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            record("Builder.build_serialized_network", network, config)
            if fake.fail_build:
                return None
            dynamic = [t for t in network.inputs if -1 in t.shape]
            profile = config.profiles[0] if config.profiles else None
            if any(profile is None or t.name not in profile.shapes for t in dynamic):
                return None  # TensorRT: a dynamic input needs an optimisation profile
            if config.timing_cache is not None:
                config.timing_cache.entries += 1  # "timed" a layer
            fake.builds.append({"profile": dict(profile.shapes) if profile else {}, "flags": set(config.flags),
                                "pools": dict(config.pools)})
            image, out = network.inputs[0], network.outputs[0]
            plan = {"input": image.name, "output": out.name, "profile": profile.shapes[image.name]}
            return _HostMemory(ENGINE_MAGIC + json.dumps(plan).encode())

    class IExecutionContext:
        def __init__(self, engine):
            self.engine = engine
            self.shapes: dict = {}
            self.addresses: dict = {}

        def set_input_shape(self, name: str, shape) -> bool:
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str):
            if name == self.engine.plan["output"]:
                b, _, h, w = self.shapes[self.engine.plan["input"]]
                return (b, 1, h, w)
            return self.shapes[name]

        def set_tensor_address(self, name: str, memory: int) -> bool:
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("IExecutionContext.execute_async_v3", stream_handle)
            return True

    class ICudaEngine:
        def __init__(self, plan: dict):
            self.plan = plan

        @property
        def num_io_tensors(self) -> int:
            return 2

        def get_tensor_name(self, index: int) -> str:
            return (self.plan["input"], self.plan["output"])[index]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name == self.plan["input"] else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return trt.float32

        def get_tensor_profile_shape(self, name: str, profile_index: int):
            return [tuple(s) for s in self.plan["profile"]]

        def create_execution_context(self):
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            blob = bytes(serialized_engine)
            record("Runtime.deserialize_cuda_engine", len(blob))
            if not blob.startswith(ENGINE_MAGIC):
                return None  # TensorRT logs the error and returns no engine
            return ICudaEngine(json.loads(blob[len(ENGINE_MAGIC):]))

    for cls in (Logger, Builder, OnnxParser, Runtime, ITimingCache, IOptimizationProfile, IBuilderConfig,
                ICudaEngine, IExecutionContext, INetworkDefinition, ITensor):
        setattr(trt, cls.__name__, cls)
    return trt


def calls_named(trt, name: str) -> list:
    """The recorded (args, kwargs) of every call to ``name``."""
    return [(args, kwargs) for n, args, kwargs in trt.fake.calls if n == name]
