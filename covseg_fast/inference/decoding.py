"""Decoding stage of `covseg screen`: worker processes read cases and compute their anatomy (body, lungs).

Cases are decoded ``workers`` at a time, a bounded number ahead of the consumer, and come back in
input order. A worker that dies without a result (the out-of-memory killer, a segfault in a DICOM
decoder) breaks a ``ProcessPoolExecutor``: every case in flight then fails with ``BrokenProcessPool``
and the pool takes no more work. Here the broken pool is replaced and the cases that were in flight
are decoded again, one at a time, in the fresh pool: only a case that kills its worker again, alone,
is recorded as failed, and the batch goes on.

A worker stuck on one case (a decoder in an endless loop, a file system that stops answering) would
block the batch forever, so the case the batch waits for may take at most ``timeout_s`` (counted from
when the batch starts waiting for it, so never less than its real decoding time): then the worker
processes are killed, that case fails with the reason, and the other cases that were in flight are
decoded again in a fresh pool (the same recovery as for a dead worker; they are not suspects, so they
are not retried one at a time). With ``workers=0`` (decoding in the main process) there is no timeout.

Workers ignore SIGINT: Ctrl-C reaches the whole process group, and only the main process should answer
it (one line, not a traceback per worker); when the consumer stops early (Ctrl-C, an error) the workers
are killed rather than waited for.

Workers do not outlive the main process: on Linux each asks the kernel for SIGKILL when its parent
dies (``PR_SET_PDEATHSIG``), and on every platform a watchdog thread exits the worker within a second
once its parent pid changes (it was re-parented) or the main process is gone (with a forkserver the
parent is the server, which stays alive as long as its workers do).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator

import torch

from ..io import Case, read_case
from .anatomy import compute_anatomy
from .cpu_runtime import single_threaded_worker
from .errors import WorkersUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
WORKER_DIED = ("decoding worker process died without a result (killed, e.g. out of memory, or crashed in a "
               "decoder); it died again when this case was retried alone")
WORKERS_UNAVAILABLE = ("decoding worker processes die as soon as they start (a process or memory limit?), so no case "
                       "can be decoded; rerun with --workers 0 (decoding in the main process), adding --resume to keep "
                       "the cases screened so far")
PARENT_POLL_S = 1.0
STOP_POLL_S = 0.1  # how soon a stopped generator notices while it waits for a worker


def decode_case(case: Case) -> dict:
    """Worker stage: read one case and compute its anatomy (:mod:`.anatomy`). Never raises: errors become a reason."""
    t0 = time.perf_counter()
    if case.problem:  # found unusable by discovery (an empty or unlistable folder)
        return {"case": case, "error": case.problem, "decode_s": 0.0}
    try:
        vol = read_case(case.path, case.kind)
        anatomy = compute_anatomy(vol.data, vol.spacing, vol.voxel_ml)
        return {"case": case, "volume": vol, "anatomy": anatomy, "decode_s": time.perf_counter() - t0}
    except Exception as exc:  # one bad input must never stop the batch
        return {"case": case, "error": reason(exc), "decode_s": time.perf_counter() - t0}


def reason(exc: BaseException) -> str:
    """One line: the message of a VolumeError, else 'ExceptionType: message'."""
    from ..io import VolumeError

    msg = " ".join(str(exc).split())
    if isinstance(exc, VolumeError) and msg:
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _worker_init(main_pid: int) -> None:
    """Runs first in every worker: ignore Ctrl-C (the main process answers it); exit when the main process dies;
    one compute thread (the cores belong to inference: cpu_runtime)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_threaded_worker()
    parent = os.getppid()  # the main process (fork, spawn) or the forkserver
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent or not _pid_alive(main_pid):  # died before the signal was armed
        os._exit(1)
    # a forkserver outlives the main process while its workers live (they hold its "alive" pipe), so the
    # parent-death signal alone would not fire there: also watch the main process itself
    threading.Thread(target=_watch_parent, args=(parent, main_pid), daemon=True,
                     name="covseg-parent-watch").start()


def _watch_parent(parent: int, main_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent or not _pid_alive(main_pid):
            os._exit(1)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _context():
    # fork is cheapest; once CUDA is initialised in this process, forking is unsafe: use forkserver
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("forkserver" if torch.cuda.is_initialized() else "fork")
    return multiprocessing.get_context("spawn")


class _Stopped(Exception):
    """The consumer asked the generator to stop (``stop`` set) while it waited for a worker."""


def _result(fut, deadline: float | None, stop: threading.Event | None):
    """``fut.result()`` by ``deadline`` (time.monotonic; None: none), polling ``stop`` every STOP_POLL_S.

    Raises:
        concurrent.futures.TimeoutError: the deadline passed. _Stopped: ``stop`` was set.
    """
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if stop is None:
            return fut.result(timeout=left)
        if stop.is_set():
            raise _Stopped()
        try:
            return fut.result(timeout=STOP_POLL_S if left is None else min(left, STOP_POLL_S))
        except cf.TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def timed_out(timeout_s: float) -> str:
    return (f"decoding took longer than {timeout_s:g} s (--decode-timeout): the decoder was stuck on this input "
            "(or it is too large for that limit); its worker was stopped and the batch went on")


def kill_workers(pool: cf.ProcessPoolExecutor) -> None:
    """SIGKILL the pool's worker processes (a stuck decoder cannot be asked to stop)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except (OSError, ValueError, AttributeError):
            pass  # already gone


def decoded_in_order(cases: list[Case], workers: int, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                     stop: threading.Event | None = None) -> Iterator[dict]:
    """Decoded cases (see :func:`decode_case`) in input order; ``workers`` ≤ 0 decodes in this process.

    Each yielded dict holds ``case`` and either ``volume``/``anatomy`` or ``error`` (one line). With workers,
    a case the batch waits for longer than ``timeout_s`` (None or ≤ 0: no limit) fails with
    :func:`timed_out`'s reason and its worker is killed. Once ``stop`` is set, the generator ends within
    ``STOP_POLL_S`` of waiting for a worker (and kills the workers), as when it is closed.
    """
    if workers <= 0:
        for c in cases:
            if stop is not None and stop.is_set():
                return
            yield decode_case(c)
        return
    limit = timeout_s if timeout_s and timeout_s > 0 else None
    ctx = _context()
    ahead = max(2, 2 * workers)
    todo = collections.deque((c, False) for c in cases)  # (case, retry alone after a worker died)
    inflight: collections.deque = collections.deque()    # (case, future, alone)
    pool = None
    idle_breaks = 0  # broken pools with nothing in flight to blame: the pool itself cannot start
    waiting = [None, 0.0]  # the future the batch waits for, and since when

    def fill() -> None:
        while todo and len(inflight) < ahead:
            c, alone = todo[0]
            if inflight and (alone or inflight[-1][2]):
                return  # a case retried alone runs with nothing beside it
            fut = pool.submit(decode_case, c)
            todo.popleft()
            inflight.append((c, fut, alone))

    def after_break(stuck: Case | None = None) -> list[dict]:
        """Results that survived the break; the cases in flight go back to be retried (alone, unless the
        pool was broken on purpose because ``stuck`` timed out)."""
        nonlocal pool, idle_breaks
        ready, again = [], []
        for c, fut, alone in inflight:
            exc = fut.exception() if fut.done() and not fut.cancelled() else BrokenProcessPool()
            if c is stuck:
                log.warning("%s: %s", c.case_id, timed_out(limit))
                ready.append({"case": c, "error": timed_out(limit)})
            elif exc is None:
                ready.append(fut.result())
            elif not isinstance(exc, BrokenProcessPool):
                ready.append({"case": c, "error": f"decoding worker failed: {reason(exc)}"})
            elif alone and stuck is None:
                log.warning("%s: %s", c.case_id, WORKER_DIED)
                ready.append({"case": c, "error": WORKER_DIED})
            else:
                again.append((c, alone if stuck is not None else True))
        idle_breaks = 0 if inflight else idle_breaks + 1
        if idle_breaks > 2:
            raise WorkersUnavailable(WORKERS_UNAVAILABLE)
        if again and stuck is None:
            log.warning("a decoding worker died; retrying %d case(s) one at a time: %s", len(again),
                        ", ".join(c.case_id for c, _ in again))
        inflight.clear()
        todo.extendleft(reversed(again))
        pool.shutdown(wait=False, cancel_futures=True)
        pool = None
        return ready

    finished = False
    try:
        while True:
            if pool is None:
                pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                              initargs=(os.getpid(),))
            try:
                fill()
            except BrokenProcessPool:
                yield from after_break()
                continue
            if not inflight:
                finished = True
                return
            c, fut, _ = inflight[0]
            if waiting[0] is not fut:
                waiting[:] = [fut, time.monotonic()]
            try:
                out = _result(fut, None if limit is None else waiting[1] + limit, stop)
            except _Stopped:
                return
            except cf.TimeoutError:
                kill_workers(pool)
                yield from after_break(stuck=c)
                continue
            except BrokenProcessPool:
                yield from after_break()
                continue
            except Exception as exc:  # e.g. a result that cannot be sent back
                out = {"case": c, "error": f"decoding worker failed: {reason(exc)}"}
            inflight.popleft()
            yield out
    finally:
        if pool is not None:
            if not finished:  # stopped early (Ctrl-C, an error downstream): do not wait for decodes in flight
                kill_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
