"""One `covseg screen` batch: discover, shard, let the output folder plan and check, run the Screener,
write the reports, summarise. Everything about the output folder is :class:`~.output_folder.OutputFolder`'s."""
from __future__ import annotations

import logging
import os
import time

from ..io import Case, discover
from .errors import UsageError
from .output_folder import OutputFolder, is_own_output
from .screener import ScreenConfig, ScreenResult

log = logging.getLogger(__name__)


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


def screen_batch(inputs: list[str], screener_factory, config: ScreenConfig, *, resume: bool = False,
                 overwrite: bool = False, shard: str | None = None, allow_output_in_input: bool = False,
                 report_format: str = "both") -> tuple[int, ScreenResult, dict]:
    """Discover, plan and screen; write summary/failures CSVs; return (exit code, result, summary).

    ``summary`` holds the report rows of every case of this shard (``rows``: screened now or complete before),
    counts (``screened`` = ``ok`` + ``warning`` cases, ``failed``, ``skipped_complete``), wall time, rates, ``stages`` (:meth:`StageTimes.as_dict`: busy seconds
    per stage, the inference loop's starved/back-pressure/drain waits, the bottleneck), ``bottleneck``
    and ``stage_line`` (the one-line account `covseg screen` prints).

    ``screener_factory()`` builds the :class:`Screener` (called after planning, so a usage error
    costs no model load). Exit code 0 when every case succeeded (or was complete), 1 when any failed.

    Raises:
        UsageError: bad shard, output location refused, outputs present without --resume/--overwrite, a
            file screen would replace that it did not write (a per-case JSON or batch report of the same name),
            an output folder that is not writable, short of space or in use by another run.
        DiscoveryError: inputs that name nothing, or that do not exist.
        ScreenInterrupted: Ctrl-C while screening (the batch reports are not rewritten).
        WorkersUnavailable: the decoding workers die as soon as they start (the batch reports are not rewritten).
        ReportWriteError: the batch reports could not be written (the previous ones are intact).
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite are mutually exclusive")
    k, n = parse_shard(shard)
    own = []  # the NIfTI files screen wrote in the output folder are never inputs

    def is_own(path: str) -> bool:
        if is_own_output(path, config.out_dir):
            own.append(path)
            return True
        return False

    cases, roots = discover(inputs, exclude=is_own)
    if own:
        log.info("skipping %d file(s) in %s written by covseg screen (masks, probabilities, lung masks, label maps)",
                 len(own), config.out_dir)
    if config.output_format == "dicom-seg":
        nifti = next((c for c in cases if c.kind == "nifti"), None)
        if nifti is not None:
            raise UsageError(f"--output-format dicom-seg: {nifti.path} is a NIfTI file, and a DICOM-SEG needs the "
                             "DICOM series it references; give DICOM series folders or use --output-format both "
                             "(DICOM-SEG for DICOM series, NIfTI masks for every case)")
    folder = OutputFolder(config.plan(), (k, n), report_format)
    folder.check_location(roots, cases, allow_output_in_input)
    mine = select_shard(cases, k, n)
    try:
        folder.lock()  # an existing folder: before anything else looks at it
        todo, done = folder.plan_cases(mine, resume, overwrite)
        folder.refuse_foreign_reports()
        folder.check_free_space(todo)
        # every check above before the model (checkpoint checks included) and before the output folder is
        # created: a usage error costs no model load and leaves nothing behind
        screener = screener_factory() if todo else None
        removed = folder.prepare([c.case_id for c in mine])  # this shard's cases only
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
        folder.write_reports(rows, res.failures)
    finally:
        folder.release()
    warned = sum(r.get("status") == "warning" for r in res.records)
    summary = {"screened": len(res.records), "ok": len(res.records) - warned, "warning": warned,
               "failed": len(res.failures), "skipped_complete": len(done),
               "slices": res.slices, "wall_s": wall,
               "volumes_per_s": len(res.records) / wall if wall > 0 else 0.0,
               "slices_per_s": res.slices / wall if wall > 0 else 0.0, "output_dir": config.out_dir,
               "stages": res.stages.as_dict(), "bottleneck": res.stages.bottleneck,
               "stage_line": res.stages.line(res.wall_s), "rows": rows}
    return (1 if res.failures else 0), res, summary
