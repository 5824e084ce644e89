"""The helpers gpu_check.sh runs, on CPU: the compile smoke, the build check, the ceilings, the environment
record, and the benchmark conftest's round override and CPU-case marker."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import compile_smoke  # noqa: E402
import gpu_build_check  # noqa: E402
import gpu_env  # noqa: E402
import roofline_ceilings  # noqa: E402

from covseg_fast import _ext  # noqa: E402


def _case(name):
    return next(c for c in compile_smoke.CASES if c.name == name)


@pytest.mark.parametrize("name", ["structure_loss", "channel_attention_gram"])
def test_compile_smoke_case_passes_on_cpu(name):
    result = compile_smoke.run_case(_case(name), "cpu", torch.float32, "aot_eager", None, set())
    assert result["status"] == "passed", result
    assert result["graphs"] >= 1 and result["out_error"] < 1e-5 and len(result["grad_errors"]) >= 1


def test_compile_smoke_reports_an_error_over_tolerance(monkeypatch):
    monkeypatch.setitem(compile_smoke.TOLERANCE, torch.float32, 0.0)  # nothing is exact against float64
    result = compile_smoke.run_case(_case("cpp_kl_loss"), "cpu", torch.float32, "aot_eager", None, set())
    assert result["status"].startswith("failed: relative error")


def test_compile_smoke_reports_a_graph_break_as_a_failure_and_goes_on(tmp_path, monkeypatch):
    def graph_break(device, dtype):
        def fn(x):
            print("a print breaks the graph")  # noqa: T201
            return x * 2

        return fn, [torch.randn(3)], None

    broken = compile_smoke.Case("graph_break", graph_break)
    monkeypatch.setattr(compile_smoke, "CASES", [broken, _case("structure_loss")])
    path = tmp_path / "smoke.json"
    assert compile_smoke.main(["--device", "cpu", "--json", str(path)]) == 1
    report = json.loads(path.read_text())
    assert [c["op"] for c in report["cases"]] == ["graph_break", "structure_loss"]
    assert report["cases"][0]["status"].startswith("failed:") and report["cases"][1]["status"] == "passed"


def test_compile_smoke_knows_the_triton_kernels():
    pytest.importorskip("triton")
    names = compile_smoke.covseg_triton_kernels()
    assert len(names) > 20 and all(n.isidentifier() for n in names)


def test_build_check_fails_loudly_when_the_cuda_kernels_are_missing(capsys):
    if _ext.has_cuda_kernels() and torch.cuda.is_available():
        pytest.skip("this build has its CUDA kernels")
    result = gpu_build_check.check()
    assert not result["ok"]
    assert any("no CUDA kernel registered" in p for p in result["problems"])
    assert gpu_build_check.main(["--expect-cuda"]) == 1
    assert "BUILD CHECK FAILED" in capsys.readouterr().out
    assert gpu_build_check.main([]) == (0 if _ext.loaded else 1)  # the dry run only reports


def test_ceilings_on_cpu(tmp_path):
    path = tmp_path / "ceilings.json"
    assert roofline_ceilings.main(["--device", "cpu", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["copy"]["bytes_per_s"] > 1e8 and result["matmul"]["flops_per_s"] > 1e8
    assert result["copy"]["bytes_per_s"] == pytest.approx(2 * result["copy"]["bytes_each_way"] / result["copy"]["median_s"])


def test_environment_record_carries_the_commit(monkeypatch):
    monkeypatch.setenv("COVSEG_GIT_COMMIT", "abc123")
    env = gpu_env.environment()
    assert env["commit"] == "abc123" and env["torch"] == torch.__version__
    assert {"pytest-xdist", "pytest-timeout", "nibabel"} <= set(env["packages"])


def _bench_conftest():
    spec = importlib.util.spec_from_file_location("bench_conftest", BENCH / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_rounds_override(monkeypatch):
    conftest = _bench_conftest()
    monkeypatch.delenv("COVSEG_BENCH_ROUNDS", raising=False)
    assert conftest.bench_rounds(20) == 20
    monkeypatch.setenv("COVSEG_BENCH_ROUNDS", "1")
    assert conftest.bench_rounds(20) == 1
    monkeypatch.setenv("COVSEG_BENCH_ROUNDS", "0")
    with pytest.raises(ValueError, match="positive integer"):
        conftest.bench_rounds(20)


def test_cpu_cases_are_marked():
    conftest = _bench_conftest()
    values = conftest.params(["msa_l0", "cpu_tiny"], {"cpu_tiny"})
    assert values[0] == "msa_l0"
    assert [m.name for m in values[1].marks] == ["cpu_case"] and values[1].values == ("cpu_tiny",)


def test_benchmark_order_puts_the_providers_of_one_case_together(tmp_path):
    import subprocess

    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-k",
                             "msa_l0 and not split", str(BENCH / "ops" / "bench_strip_conv.py")],
                            capture_output=True, text=True, cwd=BENCH.parent, timeout=600, env={**os.environ})
    ids = [line.split("[", 1)[1] for line in result.stdout.splitlines() if "::" in line]
    assert len(ids) == 12
    providers = [i.split("-", 1)[0] for i in ids]
    assert providers == ["eager", "compile", "triton"] * 4
    assert len({i.split("-", 1)[1] for i in ids[:3]}) == 1  # one case, three providers


@pytest.mark.triton
@pytest.mark.parametrize("name", ["cbam", "channel_attention_flash", "cpp_kl_loss", "structure_loss"])
def test_compile_smoke_cases_through_the_triton_kernels_under_the_interpreter(name):
    """The smoke's cases and comparison with the Triton kernels themselves (eager: the interpreter cannot
    run them under torch.compile); strip_conv and the gram path take minutes in the interpreter."""
    from covseg_fast.ops import triton as triton_backend

    if not triton_backend.interpreting():
        pytest.skip("runs the Triton kernels on CPU: needs TRITON_INTERPRET=1 (the CI triton stage)")
    result = compile_smoke.run_case(_case(name), "cpu", torch.float32, None, "triton", set())
    assert result["status"] == "passed", result
    assert result["graphs"] is None and result["out_error"] < 1e-3
