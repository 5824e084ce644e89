"""The progress bar of `covseg screen` (tqdm, when installed) and log lines that do not break it.

The bar counts slices through the model, so it moves within a volume (a 512-slice volume is many batches);
volumes done / total and the rates are in its postfix. The slice total is only known once a volume is
decoded: until every volume is, it is the decoded volumes' slices plus the mean of those for each volume
still to come (an estimate, so the ETA is one too); it is exact at the end.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Optional


class ScreenProgress:
    """What the screener tells the bar: a volume decoded, slices inferred, a volume finished (written or failed).

    Args:
        bar: a tqdm-like object (``update``, ``set_postfix_str``, ``refresh``, ``close``, ``total``), or None.
        volumes: the number of volumes in the run.
    """

    def __init__(self, bar, volumes: int):
        self.bar = bar
        self.volumes = volumes
        self.decoded_slices = 0
        self.decoded_volumes = 0
        self.finished = 0
        self.failed_undecoded = 0
        self.slices_done = 0
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()

    def decoded(self, slices: int) -> None:
        with self._lock:
            self.decoded_slices += int(slices)
            self.decoded_volumes += 1
            self._estimate_total()

    def inferred(self, slices: int) -> None:
        with self._lock:
            self.slices_done += int(slices)
            if self.bar is not None:
                self.bar.update(int(slices))

    def volume_finished(self, decoded: bool = True) -> None:
        """A volume written, or failed (``decoded=False``: it never reached the model, so it adds no slices)."""
        with self._lock:
            self.finished += 1
            if not decoded:
                self.failed_undecoded += 1
                self._estimate_total()
            if self.bar is not None:
                el = max(time.perf_counter() - self.t0, 1e-9)
                self.bar.set_postfix_str(f"{self.finished}/{self.volumes} volumes, {self.finished / el * 60:.1f} "
                                         f"vol/min, {self.slices_done / el:.1f} slices/s")

    def _estimate_total(self) -> None:
        if self.bar is None:
            return
        still = self.volumes - self.decoded_volumes - self.failed_undecoded
        mean = self.decoded_slices / self.decoded_volumes if self.decoded_volumes else 0
        self.bar.total = self.decoded_slices + int(round(still * mean))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is None:
            return
        with self._lock:
            self.bar.total = self.slices_done  # exact now (a failed volume's slices never ran)
            self.bar.refresh()
            self.bar.close()


def progress_bar(volumes: int, enabled: bool) -> ScreenProgress:
    """The run's progress (a tqdm bar over slices when ``enabled`` and tqdm is installed, else counting only)."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=0, unit="slice", desc="screening", dynamic_ncols=True)
    return ScreenProgress(bar, volumes)


def logs_through(progress: Optional[ScreenProgress]):
    """While the progress bar shows, route console log lines through ``tqdm.write`` (they do not break it)."""
    if progress is None or progress.bar is None:
        return contextlib.nullcontext()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        return contextlib.nullcontext()
    return logging_redirect_tqdm()
