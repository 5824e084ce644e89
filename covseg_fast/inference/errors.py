"""The errors `covseg screen` maps to exit codes (the CLI only maps them; see README "Troubleshooting")."""
from __future__ import annotations

EXIT_OK = 0           # every case screened
EXIT_FAILED_CASES = 1  # some cases failed (failures.csv says why)
EXIT_USAGE = 2        # bad options or inputs, output folder refused or in use: nothing was screened (or decoding
                      # workers that cannot start: WorkersUnavailable; the cases screened before it are kept)
EXIT_OUTPUT = 3       # the batch reports could not be written (disk full, I/O error); previous reports kept
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class UsageError(ValueError):
    """A command-line usage problem (exit code 2)."""


class ReportWriteError(OSError):
    """The batch reports could not be written; the previous ones are intact (exit code 3)."""


class WorkersUnavailable(RuntimeError):
    """The decoding worker processes die as soon as they start, so no case can be decoded (exit code 2: rerun
    with ``--workers 0``, and ``--resume`` to keep the cases screened before)."""


class ScreenInterrupted(Exception):
    """Ctrl-C during ``Screener.run``: ``done`` of ``total`` cases finished (written or failed) first (exit code 130).

    Cases whose outputs were being written when it came were finished (outputs are atomic); the rest
    were dropped, so ``--resume`` redoes exactly them. ``result`` (a ``ScreenResult``) holds what finished.
    """

    def __init__(self, done: int, total: int, result):
        super().__init__(f"interrupted after {done} of {total} cases; rerun with --resume")
        self.done, self.total, self.result = done, total, result
