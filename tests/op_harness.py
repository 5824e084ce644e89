"""Shared test machinery for every fused op (see DESIGN.md "anatomy of one op").

Each op test compares a backend, forced with ``use_backend``, against the
reference on fixed odd shapes and seeded random ones:

- fp32 within a stated tolerance (or bit-exact where the op is integer-exact);
- bf16/fp16 held to "at most twice the error of the reference run in that
  dtype", both measured against the reference in float64, for each output on
  its own scale (:func:`assert_low_precision_bound`);
- ``torch.library.opcheck``; float64 ``gradcheck`` on tiny shapes; bad-input errors.

Backends run where they can: C++ on CPU, CUDA/Triton on a GPU, Triton on CPU
under ``TRITON_INTERPRET=1``. Everything else skips with the backend's own reason.
"""
from __future__ import annotations

import random
from typing import Callable, Iterable, Sequence

import pytest
import torch

from covseg_fast.ops import REGISTRY, use_backend

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")


def backend_cases(op_name: str, include_reference: bool = False) -> list:
    """pytest params (backend, device) for every non-reference backend of ``op_name``.

    A backend that cannot run here becomes a param that skips with its reason,
    so the test report shows what was not exercised and why.
    """
    entry = REGISTRY[op_name]
    cases = []
    for backend in entry.backends:
        if backend.name == "reference" and not include_reference:
            continue
        for device in ("cpu", "cuda"):
            reason = backend.available(device)
            if reason is not None and reason.endswith("tensors only"):
                continue  # the backend is not meant for this device at all
            marks = [pytest.mark.skip(reason=f"{backend.name} on {device}: {reason}")] if reason else []
            if backend.name == "triton":
                marks.append(pytest.mark.triton)
            if device == "cuda":
                marks.append(pytest.mark.cuda)
            cases.append(pytest.param(backend.name, device, marks=marks, id=f"{backend.name}-{device}"))
    return cases


def run_backend(backend: str, fn: Callable, *args, **kwargs):
    """Call ``fn`` with ``backend`` forced for every covseg op inside it."""
    with use_backend(backend):
        return fn(*args, **kwargs)


def reference_call(fn: Callable, *args, **kwargs):
    with use_backend("reference"):
        return fn(*args, **kwargs)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_shapes(seed: int, count: int, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, ...]]:
    """``count`` seeded shapes, one int per (low, high) inclusive range."""
    rng = random.Random(seed)
    return [tuple(rng.randint(lo, hi) for lo, hi in ranges) for _ in range(count)]


def _flat(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flat(item)]
    return []


def assert_same(actual, expected, atol: float = 0.0, rtol: float = 0.0, what: str = "output") -> None:
    """Tensors (or nested lists) equal within tolerances; atol=rtol=0 means bit-exact."""
    a, e = _flat(actual), _flat(expected)
    assert len(a) == len(e), f"{what}: {len(a)} tensors vs {len(e)} expected"
    for i, (x, y) in enumerate(zip(a, e)):
        assert x.shape == y.shape, f"{what}[{i}]: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        assert x.dtype == y.dtype, f"{what}[{i}]: dtype {x.dtype} vs {y.dtype}"
        torch.testing.assert_close(x.cpu(), y.cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what}[{i}]: {m}")


def max_error(actual, gold) -> float:
    """Largest absolute difference over all tensors (pooled: use per-output bounds for low precision)."""
    return max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
               for x, y in zip(_flat(actual), _flat(gold)))


def _scale(t: torch.Tensor) -> float:
    return t.double().abs().max().item() if t.numel() else 0.0


def _per_output(value, n: int, what: str, label: str) -> list[float]:
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    assert len(values) == n, f"{label}: {n} outputs but {len(values)} {what}"
    return values


def assert_per_output_bound(fused_out, ref_out, gold, label: str = "", slack: float = 2.0,
                            floor: float | Sequence[float] = 0.0, rel_floor: float | Sequence[float] = 0.0,
                            names: Sequence[str] | None = None) -> list[tuple[float, float]]:
    """Per output: |fused − gold|max ≤ slack·|ref − gold|max + floor + rel_floor·scale (scale: max |gold|).

    Each output is held to its own error, so a small one (a mean next to a large gradient) cannot hide under
    a large one. ``floor`` is absolute, ``rel_floor`` relative to that output's scale (e.g. an ulp of the
    dtype it is stored in); either is one value or one per output, and absorbs outputs the reference happens
    to get (almost) exact. Returns, per output, (fused, reference) absolute errors.
    """
    f, r, g = _flat(fused_out), _flat(ref_out), _flat(gold)
    assert len(f) == len(r) == len(g), f"{label}: {len(f)} fused, {len(r)} reference, {len(g)} gold outputs"
    names = list(names) if names is not None else [f"output {i}" for i in range(len(g))]
    assert len(names) == len(g), f"{label}: {len(g)} outputs but {len(names)} names"
    floors = _per_output(floor, len(g), "floors", label)
    rel_floors = _per_output(rel_floor, len(g), "rel_floors", label)
    rows, bad = [], []
    for name, fl, rfl, a, b, want in zip(names, floors, rel_floors, f, r, g):
        assert a.shape == want.shape and b.shape == want.shape, (
            f"{label} {name}: shapes {tuple(a.shape)}, {tuple(b.shape)} vs {tuple(want.shape)}")
        scale = _scale(want)
        err_f, err_r = max_error(a, want), max_error(b, want)
        rows.append((err_f, err_r))
        if err_f > slack * err_r + fl + rfl * scale:
            bad.append(f"{name}: fused error {err_f:.3e} > {slack}× the reference's {err_r:.3e} + {fl:.1e} "
                       f"+ {rfl:.1e}·scale {scale:.3e}")
    assert not bad, f"{label}: " + "; ".join(bad)
    return rows


def assert_low_precision_bound(
    fused: Callable, reference: Callable, inputs64: Sequence, dtype: torch.dtype, slack: float = 2.0,
    floor: float | Sequence[float] = 0.0, rel_floor: float | Sequence[float] = 0.0,
    names: Sequence[str] | None = None,
) -> tuple[float, float]:
    """Each output of the fused op in ``dtype`` errs at most ``slack``× the reference run in ``dtype``.

    Both are measured against the reference in float64 on the same inputs (float64 tensors in ``inputs64``
    are cast to ``dtype``; others pass as is), output by output (:func:`assert_per_output_bound`).
    ``floor`` (absolute) and ``rel_floor`` (× each output's max |value|) absorb cases where the reference
    happens to be exact. Returns the largest (fused error, reference error) over the outputs, for reports.
    """
    gold = reference(*inputs64)
    cast = [t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype == torch.float64 else t for t in inputs64]
    rows = assert_per_output_bound(fused(*cast), reference(*cast), gold, label=str(dtype), slack=slack,
                                   floor=floor, rel_floor=rel_floor, names=names)
    return max((e for e, _ in rows), default=0.0), max((e for _, e in rows), default=0.0)


def grads_of(fn: Callable, inputs: Sequence[torch.Tensor], grad_outputs=None, seed: int = 0) -> list:
    """Gradients of sum(out · g) w.r.t. the inputs that require grad (g seeded random)."""
    outs = _flat(fn(*inputs))
    gen = generator(seed)
    if grad_outputs is None:
        grad_outputs = [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o) for o in outs]
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, leaves, grad_outputs, allow_unused=True)
    return [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, leaves)]


def opcheck(op, args: Iterable, kwargs: dict | None = None, backend: str | None = None) -> None:
    """``torch.library.opcheck`` (schema, fake, autograd registration, aot_dispatch) with ``backend`` forced."""
    with use_backend(backend):
        result = torch.library.opcheck(op, tuple(args), kwargs or {})
    failed = {k: v for k, v in result.items() if v != "SUCCESS"}
    assert not failed, f"opcheck failed: {failed}"
