"""Atomic file writes: write to a temporary file in the same directory, then rename.

A process killed at any moment leaves either the old file or the new one,
never a half-written file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe to probe


def umask_mode() -> int:
    """0o666 minus the process umask: the mode an ordinary open() would have given the file."""
    return 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save(path: str, write_to: "callable") -> None:
    """Call ``write_to(tmp_path)`` (for libraries that want a file name, e.g. nibabel), then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # keep the full extension (e.g. .nii.gz) so format-sniffing writers behave
    fd, tmp = tempfile.mkstemp(prefix="." + base + ".", suffix="." + base.split(".", 1)[-1] if "." in base else "",
                               dir=directory)
    os.close(fd)
    try:
        write_to(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
