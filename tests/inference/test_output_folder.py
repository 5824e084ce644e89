"""The output folder (issue 24): one run at a time (lock), checked before the model loads (writable, free
space), batch reports written all or nothing, temporaries of reports removed by --resume."""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covseg_fast.cli.main import main
from covseg_fast.inference import output_folder
from covseg_fast.inference.output_lock import OutputLock
from covseg_fast.models import registry
from tests.ct_helpers import axis_affine, phantom, save_nifti
from tests.inference.tiny_model import make_checkpoint
from tests.privileges import as_unprivileged


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ck") / "tiny.pt"))


def screen(*args) -> int:
    return main(["screen", "--no-progress", "--workers", "0", *map(str, args)])


def _cases(inp, n=2):
    inp.mkdir(exist_ok=True)
    for i in range(n):
        save_nifti(str(inp / f"c{i}.nii.gz"), np.round(phantom((24, 24, 3), i)), axis_affine("LPS"))


def _digest(folder):
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in sorted(os.listdir(folder))
            if (folder / f).is_file()}


@pytest.fixture()
def model_loads(monkeypatch):
    """Records every model build from a checkpoint (``model_from_checkpoint``: what screen's model factory and
    ``load_model`` call; the checks must come before it)."""
    calls, real = [], registry.model_from_checkpoint

    def recording(*a, **k):
        calls.append(a[1] if len(a) > 1 else k.get("path"))
        return real(*a, **k)

    monkeypatch.setattr(registry, "model_from_checkpoint", recording)
    return calls


def test_a_second_run_on_the_same_folder_exits_2_naming_the_first(tmp_path, ckpt, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp)
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    before = _digest(out)
    running = OutputLock(str(out))  # what a run holds while it screens
    running.acquire()
    try:
        assert screen(inp, "-o", out, "--checkpoint", ckpt, "--overwrite") == 2
    finally:
        running.release()
    msg = next(r.getMessage() for r in caplog.records if "in use by a running covseg screen" in r.getMessage())
    assert f"pid {os.getpid()} on host " in msg and "started 20" in msg and "choose another --output" in msg
    assert _digest(out) == before  # nothing touched
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--overwrite") == 0
    assert not (out / ".covseg_screen.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, ckpt, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp)
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".covseg_screen.lock").write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then"}))
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    assert f"taking over the stale lock {out / '.covseg_screen.lock'} of pid {dead.pid} on host h" in caplog.text
    assert not (out / ".covseg_screen.lock").exists()


def test_shards_of_one_batch_share_the_folder_but_a_shard_runs_once(tmp_path, ckpt, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp, 4)
    out.mkdir()
    shard0 = OutputLock(str(out), "_shard0of2")
    shard0.acquire()
    try:
        assert screen(inp, "-o", out, "--checkpoint", ckpt, "--shard", "1/2") == 0
        assert screen(inp, "-o", out, "--checkpoint", ckpt, "--shard", "0/2") == 2
        assert "in use by a running covseg screen" in caplog.text
    finally:
        shard0.release()


def _run_collecting(args, model_loads):
    """screen(*args) → (exit code, logged messages, models loaded), for a forked child."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        return screen(*args), records, list(model_loads)
    finally:
        logging.getLogger().removeHandler(handler)


def test_an_unwritable_output_folder_exits_2_before_the_model_loads(open_tmp, ckpt, model_loads):
    base = Path(open_tmp)  # inputs and checkpoint readable by nobody; the folders (root's) not writable for it
    inp = base / "in"
    _cases(inp)
    shutil.copy(ckpt, base / "tiny.pt")
    assert screen(inp, "-o", base / "warm", "--checkpoint", ckpt) == 0  # imports all the pipeline needs
    assert model_loads == [str(ckpt)]  # the fixture sees the model being built
    shutil.rmtree(base / "warm")
    del model_loads[:]
    existing = base / "existing_out"
    existing.mkdir()
    for out, words in ((base / "new" / "out", "where the output folder"), (existing, "the output folder is")):
        code, msgs, loaded = as_unprivileged(_run_collecting, [inp, "-o", out, "--checkpoint", base / "tiny.pt"],
                                             model_loads)
        assert code == 2 and loaded == [], msgs
        assert any(words in m and "not writable for this user" in m for m in msgs), msgs
        assert not (base / "new").exists() and os.listdir(existing) == []


def test_a_read_only_file_system_exits_2(tmp_path, ckpt, monkeypatch, caplog, model_loads):
    inp = tmp_path / "in"
    _cases(inp)
    real = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(output_folder.os, "statvfs", ReadOnly)
    assert screen(inp, "-o", tmp_path / "out", "--checkpoint", ckpt) == 2
    assert "is on a read-only file system" in caplog.text and model_loads == []
    assert not (tmp_path / "out").exists()


def test_too_little_free_space_exits_2_before_the_model_loads(tmp_path, ckpt, monkeypatch, caplog, model_loads):
    inp = tmp_path / "in"
    _cases(inp)

    class Usage:
        free = 5 << 20

    monkeypatch.setattr(output_folder.shutil, "disk_usage", lambda path: Usage)
    assert screen(inp, "-o", tmp_path / "out", "--checkpoint", ckpt) == 2
    assert "not enough free space for the outputs: 5 MiB free" in caplog.text and model_loads == []
    assert not (tmp_path / "out").exists()


def test_disk_full_while_writing_the_reports_keeps_the_previous_ones(tmp_path, ckpt, monkeypatch, caplog):
    import covseg_fast.atomic as atomic

    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp, 3)
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    reports = {f: (out / f).read_bytes() for f in ("summary.csv", "summary.json", "failures.csv")}
    real = atomic.write_temporary

    def full_disk(path, data):
        if path.endswith("summary.json"):  # the second report: the first temporary is written by then
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(atomic, "write_temporary", full_disk)
    caplog.clear()
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--overwrite") == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "cannot write the batch reports" in errors[0] and "No space left on device (ENOSPC)" in errors[0]
    assert "previous reports are unchanged" in errors[0] and "--resume" in errors[0]
    assert {f: (out / f).read_bytes() for f in reports} == reports
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporaries, no lock
    assert all((out / f"c{i}.json").is_file() for i in range(3))
    monkeypatch.setattr(atomic, "write_temporary", real)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = {r["case_id"]: r["status"] for r in csv.DictReader(io.StringIO(reports["summary.csv"].decode()))}
    assert {r["case_id"]: (r["status"], r["resumed"]) for r in rows} == {c: (s, "true") for c, s in first.items()}


def test_resume_removes_report_temporaries_of_a_killed_run(tmp_path, ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp)
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    left = [".summary.csv.k3j2ab.tmp", ".failures.csv.x9_1.tmp", ".summary.json.q1.tmp"]
    for name in left:
        (out / name).write_text("half")
    (out / ".notes.txt.keep").write_text("not ours")
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0
    assert sorted(f for f in os.listdir(out) if f.startswith(".")) == [".notes.txt.keep"]


def test_missing_inputs_exit_2_before_anything_is_written(tmp_path, ckpt, caplog, model_loads):
    inp = tmp_path / "in"
    _cases(inp)
    assert screen(inp, tmp_path / "nope.nii.gz", "-o", tmp_path / "out", "--checkpoint", ckpt) == 2
    assert f"input not found: {tmp_path / 'nope.nii.gz'}" in caplog.text
    assert not (tmp_path / "out").exists() and model_loads == []


def test_every_output_kind_is_known_as_screens_own(tmp_path):
    """The NIfTI files screen writes (and their temporaries) are never screened as inputs, and --resume removes
    the temporaries of every kind a case has, whichever options asked for them (one table: CASE_FILES)."""
    out = str(tmp_path)
    plan = output_folder.OutputPlan(out, probabilities=True, unrestricted=True, lung_mask=True, label_map=True,
                                    dicom_seg=True)
    paths = plan.paths("c1", dicom=True)
    assert sorted(paths) == sorted([kind for kind, _, _ in output_folder.CASE_FILES] + ["json"])
    assert "dicom_seg" not in plan.paths("c1")  # a DICOM-SEG only for a DICOM series input
    niftis = [p for p in paths.values() if p.endswith(".nii.gz")]
    assert len(niftis) == 5
    for p in niftis:
        temp = os.path.join(out, f".{os.path.basename(p)}.k3j_2.nii.gz")  # atomic_save's temporary
        assert output_folder.is_own_output(p, out) and output_folder.is_own_output(temp, out)
        assert not output_folder.is_own_output(p, str(tmp_path / "elsewhere"))
        Path(temp).write_bytes(b"half")
    assert not output_folder.is_own_output(os.path.join(out, "c1.nii.gz"), out)  # an input, not an output
    Path(out, ".c2_lungmask.nii.gz.k3j_2.nii.gz").write_bytes(b"another case's")
    assert plan.remove_stray_temporaries(["c1"]) == 5
    assert sorted(os.listdir(out)) == [".c2_lungmask.nii.gz.k3j_2.nii.gz"]
    # a resumed run without --save-lung-mask still removes what a killed run with it left
    assert output_folder.OutputPlan(out).remove_stray_temporaries(["c2"]) == 1 and os.listdir(out) == []
