"""Decoding workers: replaced when one dies (see test_screen for the batch), gone when the main process dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from covseg_fast.inference import decoding
from covseg_fast.io import Case

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except OSError:
        return False


@pytest.mark.slow  # a fresh interpreter imports torch: several seconds on 2 cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the worker processes")
def test_workers_do_not_outlive_a_killed_main_process(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from covseg_fast.inference import decoding
        from covseg_fast.io import Case

        def stuck(case):  # a decoder that takes long: the worker is busy when the main process dies
            print(os.getpid(), flush=True)
            time.sleep(120)

        decoding.decode_case = stuck
        for _ in decoding.decoded_in_order([Case(f"c{i}", "/none", "nifti") for i in range(4)], 2):
            pass
    """))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(main.stdout.readline()) for _ in range(2)]
        assert all(_alive(p) for p in workers) and main.pid not in workers
        main.send_signal(signal.SIGKILL)
        main.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "decoding workers outlived the killed main process"
    finally:
        main.kill()
        for p in workers if "workers" in locals() else []:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_the_watchdog_exits_a_worker_whose_parent_changed(monkeypatch):
    """Where PR_SET_PDEATHSIG does not exist, the parent-pid watchdog ends the worker."""
    exits = []

    class Stop(Exception):
        pass

    def fake_exit(code):
        exits.append(code)
        raise Stop

    pids = iter([100, 100, 1])
    monkeypatch.setattr(decoding.os, "getppid", lambda: next(pids))
    monkeypatch.setattr(decoding.os, "_exit", fake_exit)
    monkeypatch.setattr(decoding, "PARENT_POLL_S", 0.0)
    with pytest.raises(Stop):
        decoding._watch_parent(100)
    assert exits == [1]


def test_in_process_decoding_keeps_input_order(tmp_path):
    cases = [Case(f"c{i}", str(tmp_path / f"missing{i}.nii.gz"), "missing") for i in range(5)]
    for workers in (0, 2):
        got = list(decoding.decoded_in_order(cases, workers))
        assert [g["case"].case_id for g in got] == [c.case_id for c in cases]
        assert all(g["error"] == "file not found" for g in got)
