"""The compile baseline proves it ran compiled: the shared-compile bug is caught, per-case compiles pass."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from compile_guard import CompileBaselineError, CompiledBaseline  # noqa: E402


def fn(x):
    return (x.sin() * 2).sum(-1)


def shapes():  # ten cases of different shapes, as the attention benchmark had
    return [torch.randn(n, 3) for n in range(1, 11)]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_compiling_per_case_without_a_reset_falls_back_to_eager_from_the_ninth_case():
    # the old benchmarks' pattern (one torch.compile per case or one shared): Dynamo's cache lives on the code
    # object, so the recompile limit (8) is reached and later cases run eagerly with only a warning
    torch._dynamo.reset()
    new_graphs = []
    for x in shapes():
        compiled = torch.compile(fn, dynamic=False, backend="eager")
        before = _graphs()
        compiled(x)
        new_graphs.append(_graphs() - before)
    assert new_graphs == [1] * 8 + [0, 0]


def test_a_warm_up_that_compiled_nothing_fails_the_case():
    baseline = CompiledBaseline(lambda x: x, backend="eager")  # no tensor op: Dynamo makes no graph
    baseline(torch.randn(3, 3))
    with pytest.raises(CompileBaselineError, match="compiled no graph"):
        baseline.warmed()


def test_a_fresh_baseline_per_case_compiles_every_case():
    for x in shapes():
        baseline = CompiledBaseline(fn, backend="eager")
        baseline(x)
        baseline.warmed()
        for _ in range(3):
            baseline(x)
        baseline.check_timed()
        assert baseline.info()["compiled_graphs"] >= 1
        torch.testing.assert_close(baseline(x), fn(x))


def test_a_recompile_while_timed_is_caught():
    baseline = CompiledBaseline(fn, backend="eager")
    x = torch.randn(4, 3, requires_grad=True)
    baseline(x)  # warm-up with grad enabled ...
    baseline.warmed()
    with torch.no_grad():  # ... timed without: another guard, a recompile inside the timing
        baseline(x)
    with pytest.raises(CompileBaselineError, match="converted 1 frame"):
        baseline.check_timed()


def test_check_timed_needs_warmed_first():
    baseline = CompiledBaseline(fn, backend="eager")
    with pytest.raises(CompileBaselineError, match="before warmed"):
        baseline.check_timed()
