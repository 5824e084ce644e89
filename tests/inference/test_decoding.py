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
@pytest.mark.parametrize("method", ["fork", "forkserver"])  # forkserver: what the screener uses once CUDA is up
def test_workers_do_not_outlive_a_killed_main_process(tmp_path, method):
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, os, time
        from covseg_fast.inference import decoding
        from covseg_fast.io import Case

        def stuck(case):  # a decoder that takes long: the worker is busy when the main process dies
            os.write(1, f"{{os.getpid()}}\\n".encode())  # one write: the two workers' lines never interleave
            time.sleep(120)

        if __name__ == "__main__":
            decoding.decode_case = stuck
            decoding._context = lambda: multiprocessing.get_context("{method}")
            for _ in decoding.decoded_in_order([Case(f"c{{i}}", "/none", "nifti") for i in range(4)], 2):
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
    """The watchdog ends a worker whose parent changed (no PR_SET_PDEATHSIG) or whose main process died."""
    exits = []

    class Stop(Exception):
        pass

    def fake_exit(code):
        exits.append(code)
        raise Stop

    monkeypatch.setattr(decoding.os, "_exit", fake_exit)
    monkeypatch.setattr(decoding, "PARENT_POLL_S", 0.0)
    pids = iter([100, 100, 1])  # re-parented: the parent died
    monkeypatch.setattr(decoding.os, "getppid", lambda: next(pids))
    with pytest.raises(Stop):
        decoding._watch_parent(100, os.getpid())
    monkeypatch.setattr(decoding.os, "getppid", lambda: 100)  # a forkserver parent lives on, the main died
    alive = iter([True, True, False])
    monkeypatch.setattr(decoding, "_pid_alive", lambda pid: next(alive))
    with pytest.raises(Stop):
        decoding._watch_parent(100, 12345)
    assert exits == [1, 1]


def test_pid_alive_sees_a_zombie_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while decoding._pid_alive(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped
        time.sleep(0.05)
    assert not decoding._pid_alive(child.pid) and child.poll() == 0
    assert decoding._pid_alive(os.getpid()) and not decoding._pid_alive(child.pid)


def test_in_process_decoding_keeps_input_order(tmp_path):
    cases = [Case(f"c{i}", str(tmp_path / f"missing{i}.nii.gz"), "missing") for i in range(5)]
    for workers in (0, 2):
        got = list(decoding.decoded_in_order(cases, workers))
        assert [g["case"].case_id for g in got] == [c.case_id for c in cases]
        assert all(g["error"] == "file not found" for g in got)


def _stuck_on_c2(case):
    """A decoder stuck forever on case c2 (an endless loop, a file system that stopped answering)."""
    if case.case_id == "c2":
        time.sleep(3600)
    return {"case": case, "decoded_by": os.getpid()}


def test_a_stuck_decoder_fails_its_case_after_the_timeout_and_the_batch_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(decoding, "decode_case", _stuck_on_c2)  # forked workers inherit the patch
    cases = [Case(f"c{i}", "/none", "nifti") for i in range(6)]
    t0 = time.monotonic()
    got = list(decoding.decoded_in_order(cases, 2, timeout_s=2.0))
    assert time.monotonic() - t0 < 60
    assert [g["case"].case_id for g in got] == [c.case_id for c in cases]  # input order kept
    assert "decoding took longer than 2 s (--decode-timeout)" in got[2]["error"]
    assert all("error" not in g for i, g in enumerate(got) if i != 2)
    stuck_pool = {g["decoded_by"] for g in got[:2]}
    deadline = time.monotonic() + 10  # SIGKILLed, a forked worker still takes a moment to exit on a busy machine
    while [p for p in stuck_pool if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in stuck_pool if _alive(p)], "the stuck pool's workers were not stopped"
    assert "c2: decoding took longer" in caplog.text


def test_workers_are_stopped_when_the_consumer_stops_early(monkeypatch):
    """Ctrl-C (or an error) in the consumer: the workers are killed at once, not waited for."""
    monkeypatch.setattr(decoding, "decode_case", _stuck_on_c2)
    gen = decoding.decoded_in_order([Case(f"c{i}", "/none", "nifti") for i in range(4)], 2, timeout_s=0)
    first = next(gen)
    t0 = time.monotonic()
    gen.close()  # what the screener does when Ctrl-C interrupts it
    assert time.monotonic() - t0 < 30
    time.sleep(0.5)
    assert not _alive(first["decoded_by"])


def test_a_stop_request_ends_the_wait_for_a_stuck_worker_and_kills_the_workers(monkeypatch):
    """The preparation thread owns the generator: setting ``stop`` (Ctrl-C in the loop) must end it while it
    waits for a stuck worker, within the poll interval, and kill the workers, as closing it does."""
    import threading
    import types

    from covseg_fast.inference.prefetch import Prefetch

    monkeypatch.setattr(decoding, "decode_case", _stuck_on_c2)
    stop = threading.Event()
    gen = decoding.decoded_in_order([Case(f"c{i}", "/none", "nifti") for i in range(4)], 2, timeout_s=0, stop=stop)
    volumes = ({**item, "volume": types.SimpleNamespace(data=None)} for item in gen)  # the stub decodes nothing
    prepared = Prefetch(volumes, lambda data: ("x", "plane"), stop, str).start()
    first = prepared.next_item()
    second = prepared.next_item()
    assert (first["case"].case_id, second["case"].case_id, first["x"]) == ("c0", "c1", "x")
    time.sleep(0.3)  # the thread now waits for c2, which never comes
    t0 = time.monotonic()
    prepared.stop()
    assert time.monotonic() - t0 < 10, "stop() waited for the stuck decoder"
    deadline = time.monotonic() + 10
    while _alive(first["decoded_by"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(first["decoded_by"]), "the workers were not killed"
