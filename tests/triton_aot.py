"""Compile every Triton kernel launch of the package for Hopper (sm_90) on a machine without a GPU.

The interpreter runs the kernels' arithmetic but not the compiler: type errors in lowering, register
spills and shared-memory overflow only show on a GPU. Here the launch wrappers are called on ``meta``
tensors at the benchmark shapes (so they pick their GPU tile configurations and nothing is
allocated), ``wrap_triton`` is replaced by a recorder, and each recorded launch (kernel, argument
types, constexprs, num_warps/num_stages) is compiled with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``; ``cuobjdump -res-usage`` on the cubin gives registers, stack (spills)
and shared memory per kernel.

Run as a script for the table: ``python tests/triton_aot.py [--json FILE]`` (under the Triton to report on;
the committed tables: benchmarks/results/triton_sm90_resources_triton*.json).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Iterator

import torch

SM90_SHARED_LIMIT = 227 * 1024  # bytes of shared memory one H100 block may use

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
           torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
           torch.bool: "i1"}


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch, ready to compile."""

    case: str
    kernel: object  # triton.JITFunction
    signature: dict
    constexprs: dict
    options: dict
    grid: tuple = ()

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def key(self) -> tuple:
        return (self.name, tuple(self.signature.items()), tuple(sorted(self.constexprs.items())),
                tuple(sorted(self.options.items())))


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for argument {value!r}")


def _record(case: str, kernel, grid, args: tuple, kwargs: dict, sink: list) -> None:
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    params = kernel.params
    signature, constexprs = {}, {}
    for i, p in enumerate(params):
        if i < len(args):
            value = args[i]
        elif p.name in kwargs:
            value = kwargs[p.name]
        elif getattr(p, "has_default", False):
            value = p.default
        else:
            raise TypeError(f"{kernel.fn.__name__}: no value for argument {p.name}")
        if p.is_constexpr or value is None:
            signature[p.name] = "constexpr"
            constexprs[p.name] = value
        else:
            signature[p.name] = _arg_type(value)
    grid = grid(dict(constexprs)) if callable(grid) else grid
    sink.append(Launch(case, kernel, signature, constexprs, options, tuple(int(g) for g in grid)))


class _Recorder:
    def __init__(self, case: str, sink: list):
        self.case, self.sink = case, sink

    def __call__(self, kernel):
        recorder = self

        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: _record(recorder.case, kernel, grid, args, dict(kwargs), recorder.sink)

        return _Grid()


def launching_modules() -> list:
    """Every module of ``covseg_fast.ops`` and ``covseg_fast.ops.triton`` that holds a ``wrap_triton``
    (the launch wrappers call it through their module's global, so that is where it is replaced)."""
    modules = []
    for package in ("covseg_fast.ops", "covseg_fast.ops.triton"):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            # import_module, not getattr: covseg_fast.ops exports functions named like its modules (cpp_kl_loss)
            module = importlib.import_module(f"{package}.{info.name}")
            if hasattr(module, "wrap_triton"):
                modules.append(module)
    return modules


@contextlib.contextmanager
def recording(case: str, sink: list) -> Iterator[None]:
    """Inside: every ``wrap_triton(kernel)[grid](...)`` of the package is recorded into ``sink``, not run.
    Meta tensors get the GPU tile configurations and 132 SMs (an H100/H200; ops/triton/device.py)."""
    modules = launching_modules()
    saved = [m.wrap_triton for m in modules]
    try:
        for m in modules:
            m.wrap_triton = _Recorder(case, sink)
        yield
    finally:
        for m, w in zip(modules, saved):
            m.wrap_triton = w


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name)
        else:
            os.environ[name] = saved


def _meta(*shape, dtype=torch.bfloat16, channels_last=False) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _strip_conv_cases() -> dict[str, Callable]:
    from covseg_fast.ops.triton import strip_conv as k

    def run(shape, cl, dtype=torch.bfloat16):
        b, c, h, w = shape
        x = _meta(*shape, dtype=dtype, channels_last=cl)
        w0, b0 = _meta(c, 1, 5, 5, dtype=dtype), _meta(c, dtype=dtype)
        wh = [_meta(c, 1, 1, s, dtype=dtype) for s in (7, 11, 21)]
        wv = [_meta(c, 1, s, 1, dtype=dtype) for s in (7, 11, 21)]
        bs = [_meta(c, dtype=dtype) for _ in range(3)]
        for schedule in k.SCHEDULES:
            k.strip_conv_forward(x, w0, b0, wh, bs, wv, bs, torch.empty_like(x), schedule=schedule)
            with _env("COVSEG_STRIP_CONV_SCHEDULE", schedule):
                k.strip_conv_backward(torch.empty_like(x), x, w0, b0, wh, bs, wv, bs)

    return {"strip_conv msa_l0 bf16": lambda: run((16, 64, 256, 256), False),
            "strip_conv msa_l0 bf16 channels_last": lambda: run((16, 64, 256, 256), True),
            "strip_conv msa_l4 fp32": lambda: run((16, 512, 16, 16), False, torch.float32)}


def _cbam_cases() -> dict[str, Callable]:
    from covseg_fast.ops.triton import cbam as k

    def run(shape, cl):
        b, c, h, w = shape
        x = _meta(*shape, channels_last=cl)
        ca, sa = _meta(b, c), _meta(b, 1, h, w)
        mean, mx, cnt = k.channel_stats(x)
        pooled, pcnt = k.spatial_pool(x, ca)
        k.channel_stats_backward(mean, mx, x, mx, cnt)
        k.spatial_pool_backward(pooled, x, ca, pooled, pcnt)
        k.apply(x, ca, sa)
        k.apply_backward(x, x, ca, sa)
        for name in ("apply_backward_reduce", "spatial_pool_backward_reduce", "block_backward_x"):
            if hasattr(k, name):
                fn = getattr(k, name)
                if name == "apply_backward_reduce":
                    fn(x, x, ca, sa)
                elif name == "spatial_pool_backward_reduce":
                    fn(pooled, x, ca, pooled, pcnt)
                else:
                    fn(x, x, ca, sa, pooled, pooled, pcnt, mean, mx, mx, cnt)

    return {"cbam msa_l0 bf16": lambda: run((16, 64, 256, 256), False),
            "cbam msa_l0 bf16 channels_last": lambda: run((16, 64, 256, 256), True),
            "cbam refnet_f5 bf16": lambda: run((16, 2048, 11, 11), False)}


def _attention_cases() -> dict[str, Callable]:
    from covseg_fast.ops.triton.attention_launch import attention_backward, attention_forward

    def position(b, cq, c, n, dtype=torch.bfloat16):
        q, k, v = _meta(b, cq, n, dtype=dtype), _meta(b, cq, n, dtype=dtype), _meta(b, c, n, dtype=dtype)
        out, lse = attention_forward(q, k, v, 1.0)
        attention_backward(torch.empty_like(out), None, q, k, v, out, _meta(b, n, dtype=torch.float32), 1.0)

    def channel(b, c, n, dtype=torch.bfloat16):  # as ops/channel_attention.py calls it: (B, N, C) views
        x = _meta(b, c, n, dtype=dtype)
        xt = x.transpose(1, 2)
        out = torch.empty_like(x)
        attention_forward(xt, xt, xt, -1.0, out=out.transpose(1, 2))
        attention_backward(out.transpose(1, 2), None, xt, xt, xt, out.transpose(1, 2),
                           _meta(b, c, dtype=torch.float32), -1.0)

    def gram(b, c, n, dtype, with_gamma):  # the gram path of channel attention (attention_gram_launch.py)
        from covseg_fast.ops.triton.attention_gram_launch import gram_backward, gram_forward

        x = _meta(b, c, n, dtype=dtype)
        gamma = _meta(1, dtype=torch.float32) if with_gamma else None
        lse = gram_forward(x, 1.0, gamma, torch.empty_like(x))
        gram_backward(torch.empty_like(x), None, x, lse, gamma, 1.0, torch.empty_like(x))

    return {"position_attention msa_64 bf16": lambda: position(16, 32, 256, 4096),
            "channel_attention gram refnet_f2 bf16 gamma": lambda: gram(16, 64, 7744, torch.bfloat16, True),
            "channel_attention gram refnet_f4 fp16 gamma": lambda: gram(16, 256, 484, torch.float16, True),
            "channel_attention gram refnet_f5 fp32": lambda: gram(16, 2048, 121, torch.float32, False),
            "position_attention msa_32 fp32": lambda: position(16, 64, 512, 1024, torch.float32),
            "position_attention refnet_f5 bf16": lambda: position(16, 256, 2048, 121),
            "position_attention refnet_f5 fp32": lambda: position(16, 256, 2048, 121, torch.float32),
            "channel_attention refnet_f5 bf16": lambda: channel(16, 2048, 121),
            "channel_attention refnet_f5 fp32": lambda: channel(16, 2048, 121, torch.float32)}


def _loss_cases() -> dict[str, Callable]:
    from covseg_fast.ops.triton import cpp_kl_loss as kl_kernels
    from covseg_fast.ops.triton import structure_loss as sl

    def kl(dtype):
        logits, labels = _meta(16, 2, 16, 16, dtype=dtype), _meta(16, 256, 256, dtype=torch.int64)
        kl_kernels.cpp_kl_forward(logits, labels, 16, None)
        kl_kernels.cpp_kl_backward(_meta(dtype=torch.float32), logits, labels, 16, None)

    def structure(dtype):
        z, g = _meta(16, 1, 352, 352, dtype=dtype), _meta(16, 1, 352, 352, dtype=dtype)
        weight, _ = sl.forward(z, g)
        sl.backward(z, g, weight, _meta(16, 3, dtype=torch.float32), weighted=True)

    return {"cpp_kl_loss bf16": lambda: kl(torch.bfloat16), "cpp_kl_loss fp32": lambda: kl(torch.float32),
            "structure_loss bf16": lambda: structure(torch.bfloat16)}


def all_cases() -> dict[str, Callable]:
    return {**_strip_conv_cases(), **_cbam_cases(), **_attention_cases(), **_loss_cases()}


def record_launches(cases: dict[str, Callable] | None = None) -> list[Launch]:
    """Unique launches (first case that made each) of the given cases (default: all)."""
    sink: list[Launch] = []
    for case, fn in (cases or all_cases()).items():
        with recording(case, sink):
            fn()
    unique = {}
    for launch in sink:
        unique.setdefault(launch.key(), launch)
    return list(unique.values())


def cuobjdump() -> str | None:
    """The cuobjdump Triton ships (or one on the PATH)."""
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def compile_sm90(launch: Launch) -> dict:
    """Compile for sm_90; returns {'registers', 'stack', 'shared', 'local'} in registers/bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = [p.name for p in launch.kernel.params]
    constexprs = {(names.index(n),): v for n, v in launch.constexprs.items()}
    src = ASTSource(fn=launch.kernel, signature=launch.signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(launch.options))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([cuobjdump(), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    usage = {}
    for key, field in (("registers", "REG"), ("stack", "STACK"), ("shared", "SHARED"), ("local", "LOCAL")):
        m = re.search(rf"\b{field}:(\d+)", text)
        usage[key] = int(m.group(1)) if m else 0
    usage["shared"] = max(usage["shared"], int(getattr(compiled.metadata, "shared", 0) or 0))
    return usage


def main(argv: list[str] | None = None) -> int:
    """Print the table; ``--json PATH`` also writes it (Triton version, date, commit, one row per launch)."""
    import argparse
    import datetime
    import json

    import triton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the table to this JSON file")
    args = parser.parse_args(argv)
    launches = record_launches()
    print(f"{'kernel':38} {'case':46} {'warps':>5} {'regs':>5} {'stack':>6} {'shared':>7}")
    rows, worst = [], 0
    for launch in launches:
        u = compile_sm90(launch)
        warps = launch.options.get("num_warps", 4)
        print(f"{launch.name:38} {launch.case:46} {warps:5d} {u['registers']:5d} {u['stack']:6d} {u['shared']:7d}")
        rows.append({"kernel": launch.name, "case": launch.case, "num_warps": warps,
                     "constexprs": {k: v for k, v in launch.constexprs.items() if isinstance(v, (int, bool, str))},
                     **u})
        worst = max(worst, u["stack"])
    print(f"{len(launches)} launches compiled for sm_90 with Triton {triton.__version__}; "
          f"largest stack frame {worst} bytes")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        doc = {"what": "registers, stack (spill) and shared bytes per Triton launch, compiled for sm_90 without a GPU "
                       "(tests/triton_aot.py); compile-only figures, not measurements of speed",
               "triton": triton.__version__, "torch": torch.__version__, "target": "cuda sm_90 (warp 32)",
               "commit": commit, "date": datetime.date.today().isoformat(), "launches": rows}
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
