"""Shared test machinery for every fused op (see DESIGN.md "anatomy of one op").

Each op test compares a backend, forced with ``use_backend``, against the
reference on fixed odd shapes and seeded random ones:

- fp32 within a stated tolerance (or bit-exact where the op is integer-exact);
- bf16/fp16 held to "at most twice the error of the reference run in that
  dtype", both measured against the reference in float64 (:func:`assert_low_precision_bound`);
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
    return max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
               for x, y in zip(_flat(actual), _flat(gold)))


def assert_low_precision_bound(
    fused: Callable, reference: Callable, inputs64: Sequence, dtype: torch.dtype, slack: float = 2.0, floor: float = 0.0
) -> tuple[float, float]:
    """The fused op in ``dtype`` errs at most ``slack``× the reference run in ``dtype``.

    Both are measured against the reference in float64 on the same inputs
    (float64 tensors in ``inputs64`` are cast to ``dtype``; others pass as is).
    ``floor`` absorbs cases where the reference happens to be exact.
    Returns (fused error, reference error) for the test to report.
    """
    gold = reference(*inputs64)
    cast = [t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype == torch.float64 else t for t in inputs64]
    ref_err = max_error(reference(*cast), gold)
    fused_err = max_error(fused(*cast), gold)
    assert fused_err <= slack * ref_err + floor, (
        f"{dtype}: fused error {fused_err:.3e} exceeds {slack}× the reference's {ref_err:.3e} (+{floor:.1e})"
    )
    return fused_err, ref_err


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
