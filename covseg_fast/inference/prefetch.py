"""The preparation stage of `covseg screen`: a thread between the decoding workers and the inference loop.

It takes the decoded cases in order and turns each volume into model input (display orientation, HU
window, resize, normalisation: :meth:`Screener.to_model_slices`) while the inference loop runs the model on
the case before, so that work (about a sixth of the loop on a CPU with onnxruntime) is off the loop. torch
releases the GIL in those ops, and onnxruntime and torch in the model, so the two overlap on two cores.

The thread owns the decoded-case generator (a generator runs in one thread only): it closes it when it
ends, and :meth:`Prefetch.stop` (Ctrl-C, an error downstream) makes the generator stop waiting for its
workers within ``POLL_S`` and kill them. Errors in order: a case that cannot be prepared carries
``error``; an exception of the generator itself (e.g. WorkersUnavailable) is raised in the loop after the
cases decoded before it.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator, Optional

POLL_S = 0.1
AHEAD = 1  # prepared cases waiting for the loop (each holds its volume and its model input)
_END = object()


class Prefetch:
    """Iterate ``decoded`` in a thread, preparing each case with ``prepare(volume_data) -> (x, plane)``.

    ``next_item()`` returns the next case dict (with ``x``/``plane``, or ``error``), None at the end, and
    raises what the generator raised. ``busy_s``: seconds spent preparing (the ``device`` stage).
    """

    def __init__(self, decoded: Iterator[dict], prepare: Callable, stop: threading.Event,
                 reason: Callable[[BaseException], str]):
        self.decoded = decoded
        self.prepare = prepare
        self.stopping = stop
        self.reason = reason
        self.busy_s = 0.0
        self.q: queue.Queue = queue.Queue(maxsize=AHEAD)
        self.thread = threading.Thread(target=self._run, daemon=True, name="covseg-prepare")

    def start(self) -> "Prefetch":
        self.thread.start()
        return self

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        end: object = _END
        try:
            for item in self.decoded:
                if self.stopping.is_set():
                    break
                if "error" not in item:
                    t0 = time.perf_counter()
                    try:
                        item["x"], item["plane"] = self.prepare(item["volume"].data)
                    except Exception as exc:
                        item["error"] = f"preprocessing failed: {self.reason(exc)}"
                    self.busy_s += time.perf_counter() - t0
                if not self._put(item):
                    break
        except BaseException as exc:  # noqa: BLE001  (handed to the loop, raised there in order)
            end = exc
        finally:
            close = getattr(self.decoded, "close", None)
            if close is not None:
                close()  # in this thread, the generator's own: an early stop kills the decoding workers
            self._put(end)

    def next_item(self) -> Optional[dict]:
        item = self.q.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """Stop preparing and wait for the thread (and the decoding workers it closes)."""
        self.stopping.set()
        self.thread.join()
