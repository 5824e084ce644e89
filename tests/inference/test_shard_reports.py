"""`covseg screen --merge-shards`: merging hand-written shard reports (no model; the end-to-end runs are in
test_screen.py)."""
from __future__ import annotations

import json

import pytest

from covseg_fast.inference.errors import UsageError
from covseg_fast.inference.output_lock import OutputLock
from covseg_fast.inference.report import FAILURE_COLUMNS, SUMMARY_COLUMNS, read_csv, write_csv, write_json
from covseg_fast.inference.shard_reports import merge_shard_reports


def _row(case: str, status: str = "ok") -> dict:
    return {"case_id": case, "status": status, "path": f"/in/{case}.nii.gz", "slices": 3}


def _fail(case: str) -> dict:
    return {"case_id": case, "path": f"/in/{case}.nii.gz", "reason": "not a NIfTI"}


def test_a_shard_where_every_case_failed_merges(tmp_path):
    """Its summary CSV has no rows (and there is no JSON): its failures still count."""
    write_csv(str(tmp_path / "summary_shard0of2.csv"), [_row("a"), _row("c", "warning")], SUMMARY_COLUMNS)
    write_csv(str(tmp_path / "failures_shard0of2.csv"), [], FAILURE_COLUMNS)
    write_csv(str(tmp_path / "summary_shard1of2.csv"), [], SUMMARY_COLUMNS)
    write_csv(str(tmp_path / "failures_shard1of2.csv"), [_fail("b")], FAILURE_COLUMNS)
    code, s = merge_shard_reports(str(tmp_path))
    assert code == 1 and (s["shards"], s["screened"], s["ok"], s["warning"], s["failed"]) == (2, 2, 1, 1, 1)
    assert [r["case_id"] for r in read_csv(str(tmp_path / "summary.csv"))] == ["a", "c"]
    assert [r["reason"] for r in read_csv(str(tmp_path / "failures.csv"))] == ["not a NIfTI"]
    assert not (tmp_path / "summary.json").exists()


def test_shards_with_no_common_summary_format_are_refused(tmp_path):
    write_json(str(tmp_path / "summary_shard0of2.json"), {"cases": [_row("a")], "failures": []})
    write_csv(str(tmp_path / "failures_shard0of2.csv"), [], FAILURE_COLUMNS)
    write_csv(str(tmp_path / "summary_shard1of2.csv"), [_row("b")], SUMMARY_COLUMNS)
    write_csv(str(tmp_path / "failures_shard1of2.csv"), [], FAILURE_COLUMNS)
    with pytest.raises(UsageError, match="share no summary format"):
        merge_shard_reports(str(tmp_path))
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "failures.csv").exists()


def test_json_only_shards_merge_into_json(tmp_path):
    for k, cases in enumerate((["b"], ["a"])):
        write_json(str(tmp_path / f"summary_shard{k}of2.json"), {"cases": [_row(c) for c in cases], "failures": []})
        write_csv(str(tmp_path / f"failures_shard{k}of2.csv"), [], FAILURE_COLUMNS)
    code, s = merge_shard_reports(str(tmp_path))
    merged = json.load(open(tmp_path / "summary.json"))
    assert code == 0 and s["screened"] == 2 and [r["case_id"] for r in merged["cases"]] == ["a", "b"]
    assert not (tmp_path / "summary.csv").exists()


@pytest.mark.parametrize("suffix", ["", "_shard1of2"])
def test_merge_takes_the_folder_lock_and_each_shards(tmp_path, suffix):
    """A run on the whole folder, or a shard still running (e.g. rerun with --resume), holds a lock: the merge
    refuses to read half-written shard reports or to write beside that run; the locks are gone afterwards."""
    for k, cases in enumerate((["a"], ["b"])):
        write_csv(str(tmp_path / f"summary_shard{k}of2.csv"), [_row(c) for c in cases], SUMMARY_COLUMNS)
        write_csv(str(tmp_path / f"failures_shard{k}of2.csv"), [], FAILURE_COLUMNS)
    running = OutputLock(str(tmp_path), suffix)
    running.acquire()  # another open file description: flock conflicts as with another process
    try:
        with pytest.raises(UsageError, match="is in use by a running covseg screen: pid"):
            merge_shard_reports(str(tmp_path))
        assert not (tmp_path / "summary.csv").exists()
    finally:
        running.release()
    code, s = merge_shard_reports(str(tmp_path))
    assert code == 0 and s["screened"] == 2
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".lock")]
