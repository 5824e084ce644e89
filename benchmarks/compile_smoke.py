"""``torch.compile(fullgraph=True)`` through every Triton op, forward and backward, against the reference.

    python3 benchmarks/compile_smoke.py --json smoke.json            # on CUDA: Inductor, Triton forced
    python3 benchmarks/compile_smoke.py --device cpu --ops strip_conv  # on CPU: see below

Each case compiles a small function around one op (a pointwise op before and after, so Inductor has
something to fuse around it) with ``fullgraph=True, dynamic=False`` and runs it forward and backward with
the op's ``triton`` backend forced. Outputs and every gradient are compared with the reference run in
float64 on the same inputs by ‖out − ref‖ / ‖ref‖ (bf16 within 2e-2, fp32 within 1e-3); Dynamo must have
compiled a graph; on CUDA the profiler must see at least one of covseg's own Triton kernels launched
(so a compiled graph that silently took the reference is a failure).

On CPU Triton runs only under ``TRITON_INTERPRET=1``, where torch.compile cannot run Triton kernels.
Without it the reference serves inside the compiled graph, with the ``aot_eager`` backend by default: that
checks what compiling needs of the op registrations (fake kernels, autograd, no graph break) and the
comparison itself, not the kernels. ``--no-compile`` under ``TRITON_INTERPRET=1`` runs the same cases
eagerly through the Triton kernels (fp32; strip_conv and the gram path take minutes in the interpreter).
Results go to ``--json`` after every case (a time limit keeps what finished). Exit status 1 if any case failed.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from typing import Callable, NamedTuple

import torch

# benchmarks/ is not a package: run as a script from anywhere in the tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from covseg_fast.nn import CBAM  # noqa: E402
from covseg_fast.ops import (channel_attention, cpp_kl_loss, position_attention, strip_conv,  # noqa: E402
                             structure_loss, use_backend)
from covseg_fast.ops.triton import attention_cost  # noqa: E402

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 1e-2, torch.float32: 1e-3}


class Case(NamedTuple):
    """fn(*tensors) -> a tensor; leaves: the tensors (and module parameters) gradients are checked for."""

    name: str
    make: Callable  # (device, dtype) -> (fn, tensors, module or None)
    env: dict = {}


def _rand(gen, *shape, scale=1.0):
    return torch.randn(shape, generator=gen) * scale


def _strip_conv(device, dtype):
    g = torch.Generator().manual_seed(1)
    c, ks = 24, (7, 11, 21)
    tensors = [_rand(g, 2, c, 40, 36), _rand(g, c, 1, 5, 5, scale=0.3), _rand(g, c, scale=0.1)]
    tensors += [_rand(g, c, 1, 1, k, scale=(2 / k) ** 0.5) for k in ks] + [_rand(g, c, scale=0.1) for _ in ks]
    tensors += [_rand(g, c, 1, k, 1, scale=(2 / k) ** 0.5) for k in ks] + [_rand(g, c, scale=0.1) for _ in ks]

    def fn(x, w0, b0, *rest):
        wh, bh, wv, bv = (list(rest[i:i + 3]) for i in range(0, 12, 3))
        return strip_conv(x * 1.5, w0, b0, wh, bh, wv, bv) + 1

    return fn, tensors, None


def _cbam(device, dtype):
    torch.manual_seed(2)
    module = CBAM(48, zero_spatial_bn=False, fused=True).train()
    x = _rand(torch.Generator().manual_seed(3), 2, 48, 20, 24)
    return (lambda m, t: m(t * 1.5) + 1), [x], module


def _position_attention(device, dtype):
    g = torch.Generator().manual_seed(4)
    q, k, v = _rand(g, 2, 16, 300, scale=0.25), _rand(g, 2, 16, 300, scale=0.25), _rand(g, 2, 64, 300)
    return (lambda q_, k_, v_: position_attention(q_ * 1.5, k_, v_) + 1), [q, k, v], None


def _channel_attention(shape, variant):
    def make(device, dtype):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(5)) * (2.0 / shape[-1] ** 0.5)
        gamma = torch.full((1,), 0.5)
        return (lambda x_, g_: channel_attention(x_ * 1.5, variant, g_) + 1), [x, gamma], None

    return make


def _cpp_kl_loss(device, dtype):
    g = torch.Generator().manual_seed(6)
    logits = _rand(g, 2, 4, 16, 16)
    labels = torch.randint(0, 4, (2, 64, 64), generator=g).to(device)
    return (lambda z: cpp_kl_loss(z * 1.5, labels, 4, check_labels=False) * 2), [logits], None


def _structure_loss(device, dtype):
    g = torch.Generator().manual_seed(7)
    logits, target = _rand(g, 2, 1, 48, 40), (torch.rand(2, 1, 48, 40, generator=g) > 0.7).float().to(device)
    return (lambda z: structure_loss(z * 1.5, target, "weighted") * 2), [logits], None


CASES = [
    Case("strip_conv", _strip_conv),
    Case("cbam", _cbam),
    Case("position_attention", _position_attention),
    Case("channel_attention_flash", _channel_attention((2, 128, 121), "pfnet"), {attention_cost.PATH_ENV: "flash"}),
    Case("channel_attention_gram", _channel_attention((2, 64, 2048), "danet"), {attention_cost.PATH_ENV: "gram"}),
    Case("cpp_kl_loss", _cpp_kl_loss),
    Case("structure_loss", _structure_loss),
]


def covseg_triton_kernels() -> set[str]:
    """Names of every @triton.jit function in covseg_fast.ops.triton (kernels and device helpers)."""
    import importlib
    import pkgutil

    import triton

    from covseg_fast.ops import triton as package

    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in vars(module).values():
            while hasattr(value, "fn") and not isinstance(value, triton.runtime.jit.JITFunction):
                value = value.fn  # Autotuner / Heuristics wrap the JITFunction
            if isinstance(value, triton.runtime.jit.JITFunction):
                names.add(value.fn.__name__)
    return names


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        return float("inf")
    norm = want.norm().item()
    return (got - want).norm().item() / (norm if norm > 0 else 1.0)


def _forward_backward(fn, module, tensors, leaves):
    args = (module, *tensors) if module is not None else tensors
    out = fn(*args)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out) if out.dim() == 0 else
                                torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out))
    return out, grads


def run_case(case: Case, device: str, dtype: torch.dtype, backend: str | None, forced: str | None,
             ours: set[str]) -> dict:
    """One case; ``backend`` None runs it eagerly (no torch.compile)."""
    from torch._dynamo.utils import counters

    result = {"op": case.name, "device": device, "dtype": str(dtype), "backend": backend, "forced": forced}
    saved = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    start = time.perf_counter()
    try:
        fn, cpu_tensors, cpu_module = case.make(device, dtype)
        tensors = [t.to(device=device, dtype=dtype).requires_grad_() for t in cpu_tensors]
        module = None if cpu_module is None else copy.deepcopy(cpu_module).to(device=device, dtype=dtype)
        leaves = tensors + ([] if module is None else list(module.parameters()))
        # the gold: the reference in float64 on the same (rounded) inputs
        gold_tensors = [t.detach().double().requires_grad_() for t in tensors]
        gold_module = None if module is None else copy.deepcopy(module).double()
        gold_leaves = gold_tensors + ([] if gold_module is None else list(gold_module.parameters()))
        with use_backend("reference"):
            want, want_grads = _forward_backward(fn, gold_module, gold_tensors, gold_leaves)

        torch._dynamo.reset()
        graphs = counters["stats"]["unique_graphs"]
        compiled = fn if backend is None else torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
        with use_backend(forced):
            _forward_backward(compiled, module, tensors, leaves)  # compile and warm up
            kernels = None
            if device == "cuda":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    got, got_grads = _forward_backward(compiled, module, tensors, leaves)
                    torch.cuda.synchronize()
                kernels = sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})
            else:
                got, got_grads = _forward_backward(compiled, module, tensors, leaves)
        result["graphs"] = None if backend is None else counters["stats"]["unique_graphs"] - graphs
        result["out_error"] = _relative_error(got, want)
        result["grad_errors"] = [_relative_error(a, b) for a, b in zip(got_grads, want_grads)]
        result["tolerance"] = TOLERANCE[dtype]
        problems = []
        if backend is not None and result["graphs"] < 1:
            problems.append("Dynamo compiled no graph")
        worst = max([result["out_error"], *result["grad_errors"]])
        if not worst <= result["tolerance"]:
            problems.append(f"relative error {worst:.2e} > {result['tolerance']:.0e}")
        if kernels is not None:
            result["covseg_kernels"] = [k for k in kernels if any(k.startswith(n) for n in ours)]
            result["other_kernels"] = len(kernels) - len(result["covseg_kernels"])
            if not result["covseg_kernels"]:
                problems.append("no covseg Triton kernel ran inside the compiled graph")
        result["status"] = "failed: " + "; ".join(problems) if problems else "passed"
    except Exception as exc:  # one op's failure is recorded; the others still run
        result["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        result["traceback"] = traceback.format_exc(limit=8)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", help="torch.compile backend (default: inductor on CUDA, aot_eager on CPU)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--ops", help="comma-separated case names (default: all): " + ",".join(c.name for c in CASES))
    parser.add_argument("--no-compile", action="store_true", help="run the cases eagerly (no torch.compile)")
    parser.add_argument("--json", help="write the results here (rewritten after every case)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (use --device cpu)")
    cuda = args.device == "cuda"
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if interpreting and not args.no_compile:
        parser.error("torch.compile cannot run Triton kernels under TRITON_INTERPRET=1: add --no-compile")
    backend = None if args.no_compile else (args.backend or ("inductor" if cuda else "aot_eager"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    forced = "triton" if cuda or interpreting else None
    wanted = args.ops.split(",") if args.ops else [c.name for c in CASES]
    unknown = sorted(set(wanted) - {c.name for c in CASES})
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(c.name for c in CASES)}")
    ours = covseg_triton_kernels() if cuda else set()
    report = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
              "backend": backend, "forced_backend": forced, "cases": []}
    for case in (c for c in CASES if c.name in wanted):
        result = run_case(case, args.device, dtype, backend, forced, ours)
        report["cases"].append(result)
        errors = [result.get("out_error"), *result.get("grad_errors", [])]
        worst = max((e for e in errors if e is not None), default=float("nan"))
        print(f"compile-smoke {case.name:<24} {result['status']}  (max rel. error {worst:.1e}, "
              f"{result['seconds']:.1f} s)", flush=True)
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(report, fh, indent=1)
            os.replace(tmp, args.json)
    failed = [r["op"] for r in report["cases"] if r["status"] != "passed"]
    print(f"compile-smoke: {len(report['cases']) - len(failed)} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else "") + f"; {dtype}, backend {backend or 'none'}, "
          + (f"the {forced} backend forced" if forced else "the reference serving (CPU)")
          + ("" if backend else ", eager (no torch.compile)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
