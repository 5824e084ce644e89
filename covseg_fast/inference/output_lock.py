"""One run at a time per output folder: a lock file held with ``flock`` while `covseg screen` runs.

The lock is ``.covseg_screen.lock`` (``.covseg_screen_shardKofN.lock`` for shard K of N, so the shards
of one batch share a folder) and holds who holds it: pid, host, start time and command line. The kernel
releases an ``flock`` when its process dies, however it dies (kill -9 included), so a lock file left by
a dead run is stale by construction: the next run takes it over and says so. The file is removed when
the run ends; a run that finds the file replaced under it (another run removed and re-created it)
locks the new one instead, so two runs can never both believe they hold it.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys

from .errors import UsageError

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented)
    fcntl = None


def lock_name(suffix: str = "") -> str:
    return f".covseg_screen{suffix}.lock"


def describe_holder(info: dict) -> str:
    """'pid 123 on host h, started 2025-01-01 12:00:00 (covseg screen ...)' from a lock file's content."""
    cmd = info.get("command")
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f" ({cmd})" if cmd else ""))


class OutputLock:
    """Exclusive lock of ``out_dir`` for one run (or one shard); see the module docstring."""

    def __init__(self, out_dir: str, suffix: str = ""):
        self.path = os.path.join(out_dir, lock_name(suffix))
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        """Take the lock (the folder must exist).

        Raises:
            UsageError: another live run holds it (named), or the lock file cannot be created.
        """
        if fcntl is None or self.fd is not None:
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UsageError(f"cannot create the lock file {self.path}: {exc.strerror or exc}; is the output "
                                 "folder writable?") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read(fd)
                os.close(fd)
                who = describe_holder(holder) if holder else "another process"
                raise UsageError(f"output folder {os.path.dirname(self.path)} is in use by a running covseg screen: "
                                 f"{who}; wait for it to finish, or choose another --output") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file we locked was removed or replaced meanwhile: lock the current one
        previous = _read(fd)
        if previous:
            log.warning("taking over the stale lock %s of %s, which is no longer running", self.path,
                        describe_holder(previous))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(["covseg"] + sys.argv[1:])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (removed first, while still held: see the module docstring)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
