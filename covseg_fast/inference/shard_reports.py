"""Merge the batch reports of N shards that share one output folder (`covseg screen --merge-shards DIR`).

Each shard K of N writes ``summary_shardKofN.csv``/``.json`` and ``failures_shardKofN.csv``; once all N
have finished, the merge writes ``summary.csv``, ``summary.json`` (when every shard wrote its JSON) and
``failures.csv`` for the whole batch, sorted by case id. It refuses (usage error) reports of several
shard counts, missing shards and a case reported by two shards (stale reports of another run), and shards with
no summary format in common (one ran with --report-format csv, another with json).
"""
from __future__ import annotations

import os
import re

from .errors import UsageError
from .html_report import html_report
from .output_folder import refuse_foreign_reports, write_reports_atomically
from .output_lock import OutputLock
from .report import FAILURE_COLUMNS, csv_text, json_text, read_csv, read_json, summary_columns

SHARD_REPORT = re.compile(r"(?P<kind>summary|failures)_shard(?P<k>\d+)of(?P<n>\d+)\.(?P<ext>csv|json)")


def merge_shard_reports(out_dir: str) -> tuple[int, dict]:
    """Merge the shard reports in ``out_dir``; returns (exit code: 1 if any case failed, counts: ``shards``,
    ``screened`` = ``ok`` + ``warning``, ``failed``, ``output_dir``).

    The merge holds the folder's lock and every shard's (:class:`~.output_lock.OutputLock`) while it reads and
    writes: a shard still running (e.g. rerun with --resume), or a run on the whole folder, makes it a usage error.

    Raises:
        ReportWriteError: the merged reports could not be written (the previous ones are intact).
        UsageError: no shard reports, several shard counts, missing shards, a case in two shards, a
            summary/failures file in ``out_dir`` that screen did not write (it would be replaced), or the
            folder or a shard in use by a running covseg screen.
    """
    if not os.path.isdir(out_dir):
        raise UsageError(f"--merge-shards: {out_dir} is not a directory")
    files: dict[int, dict[tuple[str, str, int], str]] = {}
    for name in os.listdir(out_dir):
        m = SHARD_REPORT.fullmatch(name)
        if m:
            n, k = int(m["n"]), int(m["k"])
            files.setdefault(n, {})[(m["kind"], m["ext"], k)] = os.path.join(out_dir, name)
    if not files:
        raise UsageError(f"--merge-shards: no shard reports (summary_shardKofN.csv or .json) in {out_dir}")
    if len(files) > 1:
        raise UsageError(f"--merge-shards: reports of {len(files)} shard counts (N = {sorted(files)}) in {out_dir}; "
                         "remove the stale ones")
    n, have = next(iter(files.items()))
    locks = [OutputLock(out_dir)] + [OutputLock(out_dir, f"_shard{k}of{n}") for k in range(n)]
    try:
        for lock in locks:
            lock.acquire()
        return _merge(out_dir, n, have)
    finally:
        for lock in locks:
            lock.release()


def _merge(out_dir: str, n: int, have: dict[tuple[str, str, int], str]) -> tuple[int, dict]:
    csv_all = all(("summary", "csv", k) in have for k in range(n))
    json_all = all(("summary", "json", k) in have for k in range(n))
    missing = [k for k in range(n) if ("failures", "csv", k) not in have or
               not (("summary", "csv", k) in have or ("summary", "json", k) in have)]
    if missing:
        raise UsageError(f"--merge-shards: shard(s) {', '.join(map(str, missing))} of {n} have not written their "
                         f"reports in {out_dir} (not finished yet?)")
    if not (csv_all or json_all):  # e.g. one shard ran with --report-format csv, another with json
        raise UsageError(f"--merge-shards: the {n} shards in {out_dir} share no summary format (neither every "
                         "summary_shardKofN.csv nor every .json exists); rerun the odd ones with --resume")
    refuse_foreign_reports(out_dir, "", "both" if csv_all and json_all else "csv" if csv_all else "json")
    cases, records, failures, owner = [], [], [], {}
    for k in range(n):
        shard_fail = read_csv(have[("failures", "csv", k)])
        shard_rows = read_csv(have[("summary", "csv", k)]) if csv_all else []
        shard_json = read_json(have[("summary", "json", k)]) if json_all else None
        if json_all and shard_json is None:
            raise UsageError(f"--merge-shards: {have[('summary', 'json', k)]} is not a readable JSON report")
        ids = [r["case_id"] for r in shard_fail + (shard_rows if csv_all else shard_json.get("cases", []))]
        for case in ids:
            if case in owner and owner[case] != k:
                raise UsageError(f"--merge-shards: case {case} is reported by shards {owner[case]} and {k}; "
                                 "reports of different runs?")
            owner[case] = k
        failures += shard_fail
        cases += shard_rows
        if shard_json is not None:
            records += shard_json.get("cases", [])
    by_id = lambda r: r["case_id"]  # noqa: E731
    files = {}
    if csv_all:
        files["summary.csv"] = csv_text(sorted(cases, key=by_id), summary_columns(cases))
    if json_all:
        files["summary.json"] = json_text({"cases": sorted(records, key=by_id),
                                           "failures": sorted(failures, key=by_id), "shards": n})
    files["failures.csv"] = csv_text(sorted(failures, key=by_id), FAILURE_COLUMNS)
    if json_all:  # the page needs the whole records (outputs, warnings)
        files["index.html"] = html_report(sorted(records, key=by_id), sorted(failures, key=by_id), list(files))
    write_reports_atomically(out_dir, files)  # all or nothing: ReportWriteError keeps the previous ones
    screened = cases if csv_all else records
    warned = sum(r.get("status") == "warning" for r in screened)
    return (1 if failures else 0), {"shards": n, "screened": len(screened), "ok": len(screened) - warned,
                                    "warning": warned, "failed": len(failures), "output_dir": out_dir}
