"""Per-case JSON and batch CSV reports (written atomically)."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Iterable

from ..atomic import atomic_write

# units in the names: _ml millilitres, _pct percent, _mm millimetres, _hu Hounsfield units, _s seconds
# (every field: README "Reading the results")
SUMMARY_COLUMNS = ["case_id", "status", "resumed", "path", "slices",
                   "lung_ml", "lung_right_ml", "lung_left_ml",
                   "infected_ml", "infected_right_ml", "infected_left_ml",
                   "burden_pct", "burden_right_pct", "burden_left_pct", "burden_trustworthy",
                   "excluded_outside_lung_ml", "lung_checks_passed", "warnings",
                   "model", "model_parameters", "training_data", "licence", "device", "backend", "threads",
                   "decision", "threshold", "window_hu", "time_s", "mask", "note"]
CLASS_COLUMN_AFTER = "excluded_outside_lung_ml"  # per-class columns of multi-class models go after this one
FAILURE_COLUMNS = ["case_id", "path", "reason"]
PAGE_MARK = 'name="generator" content="covseg screen"'  # in the <meta> of the index.html screen writes


def written_by_screen(path: str, case_id: str | None = None) -> bool:
    """Whether ``path`` (an existing per-case JSON, summary/failures CSV or summary JSON) looks like a file
    `covseg screen` wrote: a per-case record of ``case_id``, a report with screen's columns or keys.

    Screen refuses to replace a file with one of these generic names that fails this check: with the output
    folder inside the inputs (or --resume), it may be the user's own file.
    """
    if path.endswith(".html"):  # index.html: screen's page carries PAGE_MARK
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return PAGE_MARK in fh.read(4096)
        except OSError:
            return False
    if path.endswith(".csv"):
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        return header[:2] in (SUMMARY_COLUMNS[:2], FAILURE_COLUMNS[:2])
    obj = read_json(path)
    if obj is None:
        return False
    return obj.get("case_id") == case_id if case_id is not None else "cases" in obj and "failures" in obj


def summary_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """:data:`SUMMARY_COLUMNS`, with the per-class columns of multi-class records or CSV rows (``<class>_ml``,
    ``<class>_burden_pct``, in first-seen order) after :data:`CLASS_COLUMN_AFTER`."""
    extra: list[str] = []
    for r in rows:
        extra += [k for k in r if k not in SUMMARY_COLUMNS and k not in extra and
                  (k.endswith("_ml") or k.endswith("_burden_pct"))]
    at = SUMMARY_COLUMNS.index(CLASS_COLUMN_AFTER) + 1
    return SUMMARY_COLUMNS[:at] + extra + SUMMARY_COLUMNS[at:]


def json_text(payload: dict) -> str:
    """``payload`` as indented JSON text (numpy values converted), ending in a newline."""
    return json.dumps(payload, indent=2, sort_keys=False, default=_default) + "\n"


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(json_text(payload))


def read_json(path: str) -> dict | None:
    """The JSON object in ``path``, or None when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


def csv_text(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` (dicts; missing keys left empty, extra keys ignored) as CSV text with a header line."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k, "")) for k in columns})
    return buf.getvalue()


def write_csv(path: str, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    """Write ``rows`` as CSV (see :func:`csv_text`), atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(csv_text(rows, columns))


def read_csv(path: str) -> list[dict[str, str]]:
    """Rows of a CSV written by :func:`write_csv` (empty list when missing)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _cell(v: Any) -> Any:
    """A CSV cell: empty for None (never the text "None"), true/false, 4 decimals, lists joined by "; "."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return "; ".join("" if x is None else str(x) for x in v)
    return " ".join(str(v).split())


def _default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)
