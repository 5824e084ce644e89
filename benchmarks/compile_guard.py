"""A ``torch.compile`` baseline that proves it ran compiled.

A compiled function shared across benchmark cases recompiles for every new shape; after
``torch._dynamo.config.recompile_limit`` (8) recompiles Dynamo gives up and runs the function
eagerly, with a single warning, so the "compile" column quietly times eager from the ninth case on.
:class:`CompiledBaseline` compiles afresh for one case (``torch._dynamo.reset()``, ``dynamic=False``)
and reads Dynamo's counters (``torch._dynamo.utils.counters``): the warm-up must compile at least one
graph, and the timed rounds must convert no frame (a conversion there is a recompile: the timing
would include compilation, or run eager once the limit is hit).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class CompileBaselineError(AssertionError):
    """The compile baseline did not run compiled code; its timing would not be a compile baseline."""


class _Counts(NamedTuple):
    graphs: int
    frames: int
    graph_breaks: int


def _counts() -> _Counts:
    from torch._dynamo.utils import counters

    return _Counts(counters["stats"]["unique_graphs"], counters["frames"]["total"],
                   sum(counters["graph_break"].values()))


class CompiledBaseline:
    """``torch.compile(fn, dynamic=False)`` for one benchmark case.

    Call it like ``fn``. After the warm-up calls, :meth:`warmed` (raises unless a graph was compiled);
    after timing, :meth:`check_timed` (raises if anything was compiled while timed). :meth:`info` gives
    the counts for the case's ``extra_info``.
    """

    def __init__(self, fn: Callable, **compile_kwargs):
        torch._dynamo.reset()  # a fresh cache: no other case's graphs count against the recompile limit
        compile_kwargs.setdefault("dynamic", False)
        self.fn = torch.compile(fn, **compile_kwargs)
        self._start = _counts()
        self._warm: _Counts | None = None

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def warmed(self) -> None:
        self._warm = _counts()
        if self._warm.graphs <= self._start.graphs:
            raise CompileBaselineError(
                "torch.compile compiled no graph during the warm-up (recompile limit hit, or the function was "
                "skipped): the 'compile' baseline would time eager code")

    def check_timed(self) -> None:
        if self._warm is None:
            raise CompileBaselineError("check_timed() before warmed(): call warmed() after the warm-up")
        converted = _counts().frames - self._warm.frames
        if converted:
            raise CompileBaselineError(
                f"torch.compile converted {converted} frame(s) while timed: the timed calls recompiled (their "
                "guards differ from the warm-up's: grad mode, shapes, dtypes), so the timing includes "
                "compilation or ran eager; warm up exactly as timed")

    def info(self) -> dict:
        end = self._warm or _counts()
        return {"compiled_graphs": end.graphs - self._start.graphs,
                "graph_breaks": end.graph_breaks - self._start.graph_breaks}
