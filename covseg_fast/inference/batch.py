"""One `covseg screen` batch: plan (shard, resume, output checks), run the Screener, write CSVs, summarise."""
from __future__ import annotations

import logging
import os
import time

from ..io import Case, discover
from .outputs import is_own_output
from .report import FAILURE_COLUMNS, summary_columns, write_csv, written_by_screen
from .screener import ScreenConfig, Screener, ScreenResult

log = logging.getLogger(__name__)


class UsageError(ValueError):
    """A command-line usage problem (exit code 2)."""


def parse_shard(text: str | None) -> tuple[int, int]:
    """"K/N" (0 ≤ K < N) → (K, N); None → from torchrun's RANK/WORLD_SIZE, else (0, 1).

    Raises:
        UsageError: malformed or out-of-range shard.
    """
    if text is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
        return (rank, world) if world > 1 else (0, 1)
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects K/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text}: need N ≥ 1 and 0 ≤ K < N")
    return k, n


def select_shard(cases: list[Case], k: int, n: int) -> list[Case]:
    """Every n-th case starting at k (cases are sorted, so shards are disjoint and cover all)."""
    return cases[k::n]


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_output_dir(out_dir: str, roots: list[str], cases: list[Case], allow: bool) -> None:
    """Refuse an output directory that is a file, or (unless ``allow``) one that overlaps the inputs.

    Overlap: inside an input directory or a DICOM series folder (the next run over that directory would
    find the outputs), or holding an input, i.e. the folder of an input file or a folder above an input
    (outputs would land among the inputs; before, such inputs were silently dropped as "outputs").

    Raises:
        UsageError: with the offending input named.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"output {out_dir} exists and is not a directory")
    if allow:
        return
    hint = "choose another --output or pass --allow-output-in-input"
    for root in roots + [c.path for c in cases if c.kind == "dicom"]:
        if _inside(out_dir, root):
            raise UsageError(f"output directory {out_dir} is inside the input tree {root}; {hint}")
    for c in cases:
        if c.kind != "missing" and _inside(c.path, out_dir):
            raise UsageError(f"output directory {out_dir} holds the input {c.path} (outputs would mix with the "
                             f"inputs); {hint}")


def refuse_foreign_reports(out_dir: str, suffix: str, report_format: str) -> None:
    """Raise UsageError when a batch report about to be written (failures/summary ``suffix`` .csv/.json) exists
    and was not written by screen: it may be the user's own file."""
    names = [f"failures{suffix}.csv"]
    if report_format in ("csv", "both"):
        names.append(f"summary{suffix}.csv")
    if report_format in ("json", "both"):
        names.append(f"summary{suffix}.json")
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.exists(path) and not written_by_screen(path):
            raise UsageError(f"{path} exists and was not written by covseg screen (the batch report would "
                             "replace it); move it or choose another --output")


def screen_batch(inputs: list[str], screener_factory, config: ScreenConfig, *, resume: bool = False,
                 overwrite: bool = False, shard: str | None = None, allow_output_in_input: bool = False,
                 report_format: str = "both") -> tuple[int, ScreenResult, dict]:
    """Discover, plan and screen; write summary/failures CSVs; return (exit code, result, summary).

    ``summary`` holds counts (``screened`` = ``ok`` + ``warning`` cases, ``failed``, ``skipped_complete``), wall time, rates, ``stages`` (:meth:`StageTimes.as_dict`: busy seconds
    per stage, the inference loop's starved/back-pressure/drain waits, the bottleneck), ``bottleneck``
    and ``stage_line`` (the one-line account `covseg screen` prints).

    ``screener_factory()`` builds the :class:`Screener` (called after planning, so a usage error
    costs no model load). Exit code 0 when every case succeeded (or was complete), 1 when any failed.

    Raises:
        UsageError: bad shard, output location refused, outputs present without --resume/--overwrite, or a
            file screen would replace that it did not write (a per-case JSON or batch report of the same name).
        DiscoveryError: inputs that name nothing.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite are mutually exclusive")
    k, n = parse_shard(shard)
    own = []  # masks/probabilities screen wrote in the output folder are never inputs

    def is_own(path: str) -> bool:
        if is_own_output(path, config.out_dir):
            own.append(path)
            return True
        return False

    cases, roots = discover(inputs, exclude=is_own)
    if own:
        log.info("skipping %d file(s) in %s written by covseg screen (masks, probabilities)", len(own),
                 config.out_dir)
    check_output_dir(config.out_dir, roots, cases, allow_output_in_input)
    mine = select_shard(cases, k, n)
    plan = config.plan()
    todo, done = [], []
    for c in mine:
        rec = plan.complete(c.case_id, c.path) if resume else None
        if rec is not None:
            done.append(rec)
            continue
        paths = plan.paths(c.case_id)
        if os.path.exists(paths["json"]) and not written_by_screen(paths["json"], c.case_id):
            raise UsageError(f"{paths['json']} exists and was not written by covseg screen (screening case "
                             f"{c.case_id} would replace it); move it or choose another --output")
        if not resume and not overwrite and any(os.path.exists(p) for p in paths.values()):
            raise UsageError(f"outputs for case {c.case_id} already exist in {config.out_dir}; pass --resume "
                             "(skip complete cases) or --overwrite")
        todo.append(c)
    suffix = "" if n == 1 else f"_shard{k}of{n}"
    refuse_foreign_reports(config.out_dir, suffix, report_format)
    # the model (checkpoint checks included) before the output folder: a usage error leaves nothing behind
    screener = screener_factory() if todo else None
    os.makedirs(config.out_dir, exist_ok=True)
    removed = plan.remove_stray_temporaries([c.case_id for c in mine])  # this shard's cases only
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    log.info("screening %d case(s) (shard %d/%d of %d found; %d already complete) → %s",
             len(todo), k, n, len(cases), len(done), config.out_dir)
    t0 = time.perf_counter()
    res = screener.run(todo) if todo else ScreenResult()
    wall = time.perf_counter() - t0
    # a case completed earlier keeps its record and status; "resumed" says it was not screened again
    rows = sorted([dict(r, resumed=True) for r in done] + [dict(r, resumed=False) for r in res.records],
                  key=lambda r: r["case_id"])
    for r in rows:
        r.setdefault("mask", r.get("outputs", {}).get("mask", ""))
    if report_format in ("csv", "both"):
        write_csv(os.path.join(config.out_dir, f"summary{suffix}.csv"), rows, summary_columns(rows))
    if report_format in ("json", "both"):
        from .report import write_json

        write_json(os.path.join(config.out_dir, f"summary{suffix}.json"), {"cases": rows, "failures": res.failures})
    write_csv(os.path.join(config.out_dir, f"failures{suffix}.csv"), res.failures, FAILURE_COLUMNS)
    warned = sum(r.get("status") == "warning" for r in res.records)
    summary = {"screened": len(res.records), "ok": len(res.records) - warned, "warning": warned,
               "failed": len(res.failures), "skipped_complete": len(done),
               "slices": res.slices, "wall_s": wall,
               "volumes_per_s": len(res.records) / wall if wall > 0 else 0.0,
               "slices_per_s": res.slices / wall if wall > 0 else 0.0, "output_dir": config.out_dir,
               "stages": res.stages.as_dict(), "bottleneck": res.stages.bottleneck,
               "stage_line": res.stages.line(res.wall_s)}
    return (1 if res.failures else 0), res, summary
