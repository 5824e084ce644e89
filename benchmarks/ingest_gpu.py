"""Turn what a GPU check brought back into committed results and the tables of benchmarks/README.md.

    python3 benchmarks/ingest_gpu.py /work/.device/.../files_at     # the device tool's folder (or the .tar.gz)
    python3 benchmarks/ingest_gpu.py FIRST RERUN                     # a call, then a CHECK_STEPS rerun of it
    python3 benchmarks/ingest_gpu.py OUT --no-write                  # print the tables only

Reads gpu_check.tar.gz (benchmarks/gpu_check.sh's outputs) and writes, under ``--results-dir``:
``gpu_check_<gpu>.json`` (device, torch/Triton/CUDA versions, commit, date, every step's outcome, the
cuda tests, memcheck, the build check, the compile smoke, the measured ceilings), ``ops_<gpu>.json`` and
``train_<gpu>.json`` (the pytest-benchmark JSON with that record added as ``covseg_gpu_check``); then
replaces the block between the gpu-check markers of ``--readme`` with the tables (gpu_tables.py).
Several sources (a call and its reruns, same commit) merge in order: a later call's file replaces an
earlier one's (a rerun's complete bench_ops.json replaces a cut-short one), and the steps of all are listed.
A result file of another commit is not replaced without ``--replace``; a dry run's output (CPU) is not
written to the default results folder. Files are written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_tables  # noqa: E402

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
ARCHIVE = "gpu_check.tar.gz"


class IngestError(Exception):
    """What was brought back cannot be ingested as asked; the message says why and what to do."""


def locate(source: Path, scratch: Path) -> Path:
    """The folder holding the check's files: an extracted archive, or ``source`` itself if already extracted."""
    if source.is_file() and source.name.endswith(".tar.gz"):
        archive = source
    elif source.is_dir():
        found = sorted(source.glob(ARCHIVE)) or sorted(source.glob(f"*/{ARCHIVE}")) or sorted(source.glob(f"*/*/{ARCHIVE}"))
        if not found:
            if (source / "steps.tsv").exists():
                return source
            raise IngestError(f"{source}: no {ARCHIVE} (nor an extracted steps.tsv) in it or two folders down")
        archive = found[0]
    else:
        raise IngestError(f"{source}: not a folder or a .tar.gz")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():  # nothing may land outside the scratch folder
            if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
                raise IngestError(f"{archive}: unsafe member {member.name!r}")
        tar.extractall(scratch)
    return scratch


def _json(folder: Path, name: str):
    path = folder / name
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        return {"error": f"{name} does not parse: {exc}"}


def junit(path: Path) -> dict | None:
    """Counts and failed test ids of a JUnit XML file (pytest --junitxml)."""
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["seconds"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts["failed_ids"] = failed
    return counts


def steps(folder: Path) -> list[dict]:
    rows = []
    path = folder / "steps.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, rc, seconds, cap = (line.split("\t") + [""] * 5)[:5]
        rows.append({"step": name, "status": status, "rc": rc, "seconds": seconds, "cap": cap})
    return rows


def sanitizer_errors(folder: Path) -> int | None:
    log = folder / "logs" / "memcheck.log"
    match = re.search(r"ERROR SUMMARY: (\d+) error", log.read_text(errors="replace")) if log.exists() else None
    return int(match.group(1)) if match else None


def gpu_tag(device: str | None) -> str:
    if not device:
        return "unknown"
    if device.startswith("cpu"):
        return "cpu"
    match = re.search(r"([A-Z]\d{2,3})", device)
    return (match.group(1) if match else device.split()[-1]).lower()


def merge(folders: list[Path], scratch: Path) -> Path:
    """One folder with every call's files (a later call's replace an earlier one's) and all their steps."""
    if len(folders) == 1:
        return folders[0]
    merged = scratch / "merged"
    (merged / "logs").mkdir(parents=True)
    steps_text, commits = "", set()
    for index, folder in enumerate(folders, 1):
        meta = _json(folder, "meta.json") or {}
        commits.add(meta.get("commit"))
        for path in folder.rglob("*"):
            if path.is_file() and path.name != "steps.tsv":
                target = merged / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
        for line in (folder / "steps.tsv").read_text().splitlines() if (folder / "steps.tsv").exists() else []:
            name, rest = line.split("\t", 1)
            steps_text += f"{name} (call {index})\t{rest}\n"
    if len(commits) > 1:
        raise IngestError(f"the calls ran different commits ({', '.join(sorted(map(str, commits)))}): ingest them apart")
    (merged / "steps.tsv").write_text(steps_text)
    return merged


def collect(folder: Path) -> dict:
    env = _json(folder, "env.json") or {}
    meta = _json(folder, "meta.json") or {}
    record = {key: env.get(key) for key in ("device", "capability", "multiprocessors", "torch", "cuda", "triton",
                                            "python", "date")}
    record["commit"] = env.get("commit") or meta.get("commit") or "unknown"
    record.update(dry_run=bool(meta.get("dry_run")), steps=steps(folder), meta=meta,
                  build_check=_json(folder, "build_check.json"), cuda_tests=junit(folder / "cuda_tests.xml"),
                  memcheck=junit(folder / "memcheck.xml"), memcheck_sanitizer_errors=sanitizer_errors(folder),
                  smoke=_json(folder, "smoke.json"), ceilings=_json(folder, "ceilings.json"))
    benches = {name: _json(folder, f"bench_{name}.json") for name in ("ops", "train", "train_compile")}
    if not record["device"]:  # the env step failed: the device as another step recorded it
        seen = [(record["ceilings"] or {}).get("device"), (record["smoke"] or {}).get("device")]
        seen += [b["benchmarks"][0]["extra_info"].get("device") for b in benches.values() if b and b.get("benchmarks")]
        record["device"] = next((d for d in seen if d), None)
    return {"record": record, "benches": {k: v for k, v in benches.items() if v}}


def _rate(value: float, unit: str) -> str:
    return f"{value / 1e12:.2f} T{unit}" if value >= 1e11 else f"{value / 1e9:.2f} G{unit}"


def tables(collected: dict) -> str:
    record = collected["record"]
    rows = [row for bench in collected["benches"].values() for row in gpu_tables.cases(bench)]
    ceilings = record["ceilings"] if isinstance(record.get("ceilings"), dict) and "copy" in record["ceilings"] else None
    ops, train = gpu_tables.op_rows(rows, ceilings), gpu_tables.train_rows(rows)
    sm = f" (sm {record['capability']})" if record.get("capability") else ""
    lines = [f"**{record['device']}**{sm}, torch {record['torch']}, CUDA {record['cuda']}, "
             f"Triton {record['triton']}, Python {record['python']}; commit `{record['commit']}`, {record['date']}"
             + (" — **a dry run on CPU: no GPU figure**" if record["dry_run"] else "") + ".", ""]
    if ceilings:
        fma = ceilings.get("fp32_fma", {}).get("flops_per_s")
        lines += [f"Ceilings measured in the same call: copy {_rate(ceilings['copy']['bytes_per_s'], 'B/s')} (read + "
                  f"write), {ceilings['matmul']['dtype']} matmul {_rate(ceilings['matmul']['flops_per_s'], 'FLOP/s')}"
                  + (f", fp32 FMA {_rate(fma, 'FLOP/s')}" if fma else "") + ".", ""]
    lines += ["| step | status | seconds | cap |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['cap']} |" for s in record["steps"]]
    for name, key in (("cuda tests", "cuda_tests"), ("memcheck (tests under compute-sanitizer)", "memcheck")):
        t = record.get(key)
        if t:
            failed = ", ".join(t["failed_ids"][:10]) + (" …" if len(t["failed_ids"]) > 10 else "")
            lines += ["", f"{name}: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                          f"{t['skipped']} skipped of {t['tests']} in {t['seconds']} s" + (f"; failed: {failed}" if failed else "")]
    if record.get("memcheck_sanitizer_errors") is not None:
        lines.append(f"compute-sanitizer memcheck: {record['memcheck_sanitizer_errors']} errors reported")
    check = record.get("build_check")
    if check:
        lines.append("build check: " + ("the CUDA kernels are built, registered and match the reference" if check.get("ok")
                                        else "FAILED: " + "; ".join(check.get("problems", []))))
    smoke = record.get("smoke")
    if smoke and smoke.get("cases"):
        passed = sum(c["status"] == "passed" for c in smoke["cases"])
        lines.append(f"torch.compile(fullgraph) smoke ({smoke['backend']}): {passed} of {len(smoke['cases'])} passed"
                     + "".join(f"; {c['op']}: {c['status']}" for c in smoke["cases"] if c["status"] != "passed"))
    if ops:
        lines += ["", "Medians; ratios are the fused provider against eager and torch.compile measured in the same run; "
                      "'of floor' is the compulsory-traffic floor over the measured time (gpu_tables.py).", ""]
        lines += gpu_tables.ops_table(ops)
    if train:
        lines += [""] + gpu_tables.train_table(train)
    if ops or train:
        lines += [""] + gpu_tables.goals_table(gpu_tables.goals(ops, train))
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(collected: dict, results_dir: Path, replace: bool) -> list[Path]:
    record = collected["record"]
    gpu = gpu_tag(record["device"] or "")
    outputs = {f"gpu_check_{gpu}.json": {"covseg_gpu_check": record}}
    for name, bench in collected["benches"].items():
        outputs[f"{name}_{gpu}.json"] = {**bench, "covseg_gpu_check": {k: v for k, v in record.items()
                                                                       if k not in ("steps", "smoke", "meta")}}
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in outputs:  # check every target before writing any
        path = results_dir / name
        if path.exists() and not replace:
            old = json.loads(path.read_text()).get("covseg_gpu_check", {}).get("commit")
            if old != record["commit"]:
                raise IngestError(f"{path} holds commit {old}, this run is {record['commit']}: pass --replace to "
                                  "replace it, or --results-dir elsewhere")
    written = []
    for name, data in outputs.items():
        _write_atomic(results_dir / name, json.dumps(data, indent=1, default=str) + "\n")
        written.append(results_dir / name)
    return written


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise IngestError(f"{readme}: no {BEGIN} … {END} block to replace (add the two markers where the tables go)")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    _write_atomic(readme, f"{head}{BEGIN}\n{block}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", type=Path, nargs="+",
                        help="the device tool's files_at folder, $OUT, or gpu_check.tar.gz; several: a call and its reruns")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--no-write", action="store_true", help="print the tables; write nothing")
    parser.add_argument("--replace", action="store_true", help="replace result files of another commit")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folders = []
            for index, source in enumerate(args.sources):
                (Path(scratch) / str(index)).mkdir()
                folders.append(locate(source, Path(scratch) / str(index)))
            collected = collect(merge(folders, Path(scratch)))
            block = tables(collected)
            print(block)
            if args.no_write:
                return 0
            if collected["record"]["dry_run"] and args.results_dir.resolve() == (HERE / "results").resolve():
                raise IngestError("this is a dry run's output (CPU): its figures are not GPU results; use --no-write, "
                                  "or --results-dir and --readme elsewhere")
            for path in write_results(collected, args.results_dir, args.replace):
                print(f"wrote {path}")
            update_readme(args.readme, block)
            print(f"updated {args.readme}")
    except IngestError as exc:
        print(f"ingest_gpu: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
