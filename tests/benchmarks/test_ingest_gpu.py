"""ingest_gpu.py and gpu_tables.py, proven on CPU before a device exists: synthetic outputs of a GPU check
(pytest-benchmark JSON, JUnit, the ceilings) and the real CPU benchmark JSON committed in benchmarks/results."""
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_tables  # noqa: E402
import ingest_gpu  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CEILINGS = {"device": "NVIDIA H200", "copy": {"bytes_per_s": 4.0e12}, "matmul": {"dtype": "torch.bfloat16",
            "flops_per_s": 8.0e14}, "fp32_fma": {"flops_per_s": 5.0e13}}
BYTES_X = 16 * 64 * 256 * 256 * 2  # msa_l0 in bf16


def entry(file, test, params, median, **extra):
    ids = "-".join(str(v) for v in params.values())
    return {"group": test, "name": f"{test}[{ids}]", "fullname": f"benchmarks/{file}::{test}[{ids}]",
            "params": params, "extra_info": {"commit": COMMIT, **extra},
            "stats": {"median": median, "rounds": 20, "mean": median}}


def strip(provider, mode, median):
    return entry("ops/bench_strip_conv.py", "test_strip_conv",
                 {"provider": provider, "shape_name": "msa_l0", "mode": mode, "layout": "nchw"}, median,
                 provider=provider, mode=mode, dtype="torch.bfloat16", bytes_x=BYTES_X)


def ops_json():
    benches = [strip("eager", "fwd+bwd", 4e-3), strip("compile", "fwd+bwd", 2e-3), strip("triton", "fwd+bwd", 1e-3)]
    for provider, median in (("eager", 2e-3), ("compile", 5e-4), ("cuda", 5e-5)):
        benches.append(entry("ops/bench_class_prob_pool.py", "test_class_prob_pool",
                             {"provider": provider, "shape": "msa_k2", "dtype": "UNSERIALIZABLE[torch.int64]"}, median,
                             provider=provider, mode="fwd", compulsory_bytes=100_000_000))
    for provider, median in (("eager", 1e-3), ("fused", 2e-4)):
        benches.append(entry("ops/bench_attention.py", "test_position_attention",
                             {"shape_name": "msa_64", "provider": provider, "mode": "fwd"}, median,
                             provider=provider, mode="fwd", flops=8e10, bytes=1e8))
    benches.append(entry("ops/bench_attention.py", "test_position_attention",
                         {"shape_name": "f2_128", "provider": "fused", "mode": "fwd+bwd"}, 1e-2, provider="fused",
                         mode="fwd+bwd", flops=1e12, bytes=1e9, peak_memory_bytes=600_000_000))
    return {"machine_info": {}, "benchmarks": benches}


def train_json():
    benches = [entry("models/bench_msa_unet.py", "test_msa_unet",
                     {"shape_name": "gpu_b16_256", "layout": "channels_last", "mode": "train", "provider": p}, m,
                     provider=p, mode="train", batch=16)
               for p, m in (("fused", 0.05), ("reference", 0.125), ("compile", 0.06))]
    benches += [entry("models/bench_refnet.py", "test_train_step",
                      {"provider": p, "shape_name": "b16_352", "layout": "channels_last"}, m, provider=p, mode="train",
                      batch=16) for p, m in (("fused", 0.1), ("eager", 0.12))]
    return {"machine_info": {}, "benchmarks": benches}


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
skipped="2" tests="5" time="101.5"><testcase classname="tests.ops.test_a" name="test_ok" time="1"/>
<testcase classname="tests.ops.test_a" name="test_ok2" time="1"/><testcase classname="tests.ops.test_b"
name="test_bad[cuda]" time="1"><failure message="boom">boom</failure></testcase><testcase classname="x"
name="s1"><skipped/></testcase><testcase classname="x" name="s2"><skipped/></testcase></testsuite></testsuites>"""


def make_outputs(tmp_path: Path, dry_run=False, device="NVIDIA H200") -> Path:
    """A folder as the device tool returns it: summary.txt and gpu_check.tar.gz."""
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    files = {"env.json": {"device": device, "capability": "9.0", "torch": "2.11.0+cu130", "cuda": "13.0",
                          "triton": "3.6.0", "python": "3.12.3", "commit": COMMIT, "date": "2026-12-02T10:00:00+00:00"},
             "meta.json": {"commit": COMMIT, "dry_run": dry_run}, "ceilings.json": CEILINGS,
             "bench_ops.json": ops_json(), "bench_train.json": train_json(),
             "build_check.json": {"ok": True, "problems": []},
             "smoke.json": {"backend": "inductor", "cases": [{"op": "strip_conv", "status": "passed"},
                                                             {"op": "cbam", "status": "failed: relative error 1e-1"}]}}
    for name, data in files.items():
        (work / name).write_text(json.dumps(data))
    (work / "cuda_tests.xml").write_text(JUNIT)
    (work / "steps.tsv").write_text("env\tok\t0\t4\t20\ncuda-tests\tFAILED\t1\t120\t200\n")
    (work / "logs" / "memcheck.log").write_text("========= ERROR SUMMARY: 0 errors\n")
    out = tmp_path / "files_at" / "out"
    out.mkdir(parents=True)
    with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(work, arcname=".")
    (out / "summary.txt").write_text("summary\n")
    return tmp_path / "files_at"


def readme(tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"# Benchmarks\n\nbefore\n{ingest_gpu.BEGIN}\nold tables\n{ingest_gpu.END}\nafter\n")
    return path


def test_ratios_floor_and_goals_from_synthetic_runs():
    rows = gpu_tables.cases(ops_json()) + gpu_tables.cases(train_json())
    ops = {(r["suite"], r["params"].get("shape_name") or r["params"].get("shape"), r["params"].get("mode")): r
           for r in gpu_tables.op_rows(rows, CEILINGS)}
    strip = ops[("strip_conv", "msa_l0", "fwd+bwd")]
    assert strip["vs_eager"] == pytest.approx(4.0) and strip["vs_compile"] == pytest.approx(2.0)
    # 5E bytes at 4 TB/s against 3 × 206 FLOP per element at 50 TFLOP/s: compute-bound here
    elements = BYTES_X / 2
    assert strip["bound"] == "compute"
    assert strip["floor_s"] == pytest.approx(max(5 * BYTES_X / 4e12, 3 * 206 * elements / 5e13))
    assert strip["floor_fraction"] == pytest.approx(strip["floor_s"] / 1e-3)
    pool = ops[("class_prob_pool", "msa_k2", "fwd")]
    assert pool["vs_eager"] == pytest.approx(40.0) and pool["vs_compile"] == pytest.approx(10.0)
    assert pool["floor_s"] == pytest.approx(1e8 / 4e12) and pool["bound"] == "memory"
    attention = ops[("position_attention", "msa_64", "fwd")]
    assert attention["tflops"] == pytest.approx(8e10 / 2e-4 / 1e12)  # 400 TFLOP/s
    assert attention["floor_s"] == pytest.approx(8e10 / 8e14) and attention["bound"] == "compute"
    train = {r["suite"]: r for r in gpu_tables.train_rows(rows)}
    assert train["msa_unet"]["vs_eager"] == pytest.approx(2.5) and train["msa_unet"]["vs_compile"] == pytest.approx(1.2)
    assert train["msa_unet"]["images_per_s"]["fused"] == pytest.approx(320.0)
    goals = {g["goal"]: g for g in gpu_tables.goals(list(ops.values()), list(train.values()))}
    assert goals["class_prob_pool vs eager"]["met"] is True
    assert goals["strip_conv fwd+bwd at msa_l0 vs eager"]["met"] is True
    assert goals["position attention forward, TFLOP/s"]["met"] is True
    assert goals["position attention N = 16384 fwd+bwd, extra GB (< 1)"]["worst"] == pytest.approx(0.6)
    assert goals["MSA-UNet training step vs compile"]["met"] is False  # 1.2 < 1.3
    assert goals["Ref-Net training step vs eager"]["met"] is False  # 1.2 < 1.5
    assert goals["CBAM fwd+bwd vs eager"]["met"] is None  # not measured is not a pass


def test_the_committed_cpu_benchmark_json_gives_the_readme_ratios():
    # real pytest-benchmark output: benchmarks/README.md's class_prob_pool table was read from this file
    rows = gpu_tables.cases(json.loads((BENCH / "results" / "class_prob_pool_cpu_1thread.json").read_text()))
    table = {(r["params"]["shape"], r["params"]["dtype"]): r for r in gpu_tables.op_rows(rows, None)}
    assert round(table[("msa_k2", "torch.int64")]["vs_eager"], 1) == 10.5
    assert round(table[("msa_k2", "torch.int64")]["vs_compile"], 1) == 3.4
    assert round(table[("refnet", "torch.uint8")]["vs_compile"], 1) == 16.5
    assert all(r["fused"] == "cpp" and r["floor_s"] is None for r in table.values())  # no ceilings given


def test_ingest_writes_results_and_the_readme_block(tmp_path):
    source, results, doc = make_outputs(tmp_path), tmp_path / "results", readme(tmp_path)
    assert ingest_gpu.main([str(source), "--results-dir", str(results), "--readme", str(doc)]) == 0
    summary = json.loads((results / "gpu_check_h200.json").read_text())["covseg_gpu_check"]
    assert summary["device"] == "NVIDIA H200" and summary["commit"] == COMMIT and summary["triton"] == "3.6.0"
    assert summary["cuda_tests"]["passed"] == 2 and summary["cuda_tests"]["failed_ids"] == ["tests.ops.test_b::test_bad[cuda]"]
    assert summary["memcheck_sanitizer_errors"] == 0
    ops = json.loads((results / "ops_h200.json").read_text())
    assert len(ops["benchmarks"]) == 9 and ops["covseg_gpu_check"]["ceilings"]["copy"]["bytes_per_s"] == 4.0e12
    assert (results / "train_h200.json").exists()
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n") and text.endswith(f"{ingest_gpu.END}\nafter\n")
    assert "old tables" not in text
    assert "| strip_conv (triton) | msa_l0 fwd+bwd nchw | 4.000 | 2.000 | 1.000 | 4.00× | 2.00× | — |" in text
    assert "| position_attention (fused) | msa_64 fwd | 1.000 | — | 0.200 | 5.00× | — | 400.0 |" in text
    assert "cuda tests: 2 passed, 1 failed, 0 errors, 2 skipped of 5" in text
    assert "cbam: failed: relative error" in text and "copy 4.00 TB/s" in text
    assert "| MSA-UNet training step vs compile | 1.3 | 1.20 | 1 | **no** |" in text


def test_ingest_refuses_to_replace_another_commits_results(tmp_path, capsys):
    source, results, doc = make_outputs(tmp_path), tmp_path / "results", readme(tmp_path)
    results.mkdir()
    old = {"covseg_gpu_check": {"commit": "feedface"}}
    (results / "ops_h200.json").write_text(json.dumps(old))
    assert ingest_gpu.main([str(source), "--results-dir", str(results), "--readme", str(doc)]) == 2
    err = capsys.readouterr().err
    assert "holds commit feedface" in err and "--replace" in err
    assert json.loads((results / "ops_h200.json").read_text()) == old  # untouched
    assert "old tables" in doc.read_text()
    assert not (results / "gpu_check_h200.json").exists()  # nothing written before the check
    assert ingest_gpu.main([str(source), "--results-dir", str(results), "--readme", str(doc), "--replace"]) == 0


def test_a_dry_run_is_not_written_as_gpu_results(tmp_path, capsys):
    source = make_outputs(tmp_path, dry_run=True, device="cpu")
    assert ingest_gpu.main([str(source)]) == 2
    assert "dry run" in capsys.readouterr().err
    assert ingest_gpu.main([str(source), "--no-write"]) == 0
    assert "a dry run on CPU: no GPU figure" in capsys.readouterr().out


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    assert ingest_gpu.main([str(tmp_path / "missing")]) == 2
    assert "not a folder or a .tar.gz" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ingest_gpu.main([str(empty)]) == 2
    assert "no gpu_check.tar.gz" in capsys.readouterr().err
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escape.txt")
    assert ingest_gpu.main([str(evil), "--no-write"]) == 2
    assert "unsafe member" in capsys.readouterr().err
    source, doc = make_outputs(tmp_path / "run"), tmp_path / "plain.md"
    doc.write_text("no markers\n")
    assert ingest_gpu.main([str(source), "--results-dir", str(tmp_path / "r"), "--readme", str(doc)]) == 2
    assert "no <!-- gpu-check:begin -->" in capsys.readouterr().err
    assert doc.read_text() == "no markers\n"


def test_gpu_tag():
    assert ingest_gpu.gpu_tag("NVIDIA H200") == "h200"
    assert ingest_gpu.gpu_tag("NVIDIA H100 80GB HBM3") == "h100"
    assert ingest_gpu.gpu_tag("cpu") == "cpu" and ingest_gpu.gpu_tag(None) == "unknown"
    assert os.path.basename(ingest_gpu.ARCHIVE) == "gpu_check.tar.gz"


def test_a_rerun_replaces_the_files_it_remade_and_both_calls_steps_are_listed(tmp_path):
    first = make_outputs(tmp_path / "first")
    rerun_work = tmp_path / "rerun" / "work"
    rerun_work.mkdir(parents=True)
    faster = ops_json()
    for bench in faster["benchmarks"]:
        if bench["params"].get("provider") == "triton":
            bench["stats"]["median"] = 5e-4  # the rerun measured 8× eager
    (rerun_work / "bench_ops.json").write_text(json.dumps(faster))
    (rerun_work / "meta.json").write_text(json.dumps({"commit": COMMIT, "dry_run": False}))
    (rerun_work / "steps.tsv").write_text("bench-ops\tok\t0\t70\t150\n")
    rerun = tmp_path / "rerun" / "out"
    rerun.mkdir()
    with tarfile.open(rerun / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(rerun_work, arcname=".")
    results, doc = tmp_path / "results", readme(tmp_path)
    assert ingest_gpu.main([str(first), str(rerun), "--results-dir", str(results), "--readme", str(doc)]) == 0
    text = doc.read_text()
    assert "| strip_conv (triton) | msa_l0 fwd+bwd nchw | 4.000 | 2.000 | 0.500 | 8.00× | 4.00× |" in text
    assert "| env (call 1) | ok |" in text and "| bench-ops (call 2) | ok |" in text
    assert json.loads((results / "gpu_check_h200.json").read_text())["covseg_gpu_check"]["device"] == "NVIDIA H200"


def test_calls_of_different_commits_are_not_merged(tmp_path, capsys):
    first = make_outputs(tmp_path / "a")
    other = tmp_path / "b" / "work"
    other.mkdir(parents=True)
    (other / "meta.json").write_text(json.dumps({"commit": "feedface", "dry_run": False}))
    (other / "steps.tsv").write_text("env\tok\t0\t4\t20\n")
    assert ingest_gpu.main([str(first), str(other), "--no-write"]) == 2
    assert "different commits" in capsys.readouterr().err


def test_the_benchmarks_readme_has_the_block_ingest_replaces(tmp_path):
    doc = tmp_path / "README.md"
    original = (BENCH / "README.md").read_text()
    doc.write_text(original)
    ingest_gpu.update_readme(doc, "NEW TABLES\n")
    head, tail = original.split(ingest_gpu.BEGIN)[0], original.split(ingest_gpu.END)[1]
    assert doc.read_text() == f"{head}{ingest_gpu.BEGIN}\nNEW TABLES\n{ingest_gpu.END}{tail}"


def test_the_device_comes_from_another_step_when_env_failed(tmp_path):
    source = make_outputs(tmp_path)
    folder = ingest_gpu.locate(source, tmp_path / "x")
    (folder / "env.json").unlink()
    assert ingest_gpu.collect(folder)["record"]["device"] == "NVIDIA H200"  # from ceilings.json
