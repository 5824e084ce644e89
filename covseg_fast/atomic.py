"""Atomic file writes: write to a temporary file in the same directory, then rename.

A process killed at any moment leaves either the old file or the new one,
never a half-written file. :func:`atomic_write_all` extends this to several files: every new file is
written (and synced) first, and only then are they renamed, so an error while writing (a full disk)
leaves all the old files as they were. Temporaries are named ``.<name>.<random>.tmp``.
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


def write_temporary(path: str, data: bytes) -> str:
    """Write ``data`` to a synced temporary sibling of ``path`` (ordinary permissions); returns its path.

    The temporary is removed again when writing fails.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_mode())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_all(files: dict[str, bytes]) -> None:
    """Replace every ``path`` with its ``data``, all or nothing as far as writing goes.

    All temporaries are written first; an error there (e.g. ``ENOSPC``) removes them and re-raises, the
    old files untouched. Then each is renamed over its target (a rename writes no data).
    """
    done: list[tuple[str, str]] = []
    try:
        for path, data in files.items():
            done.append((write_temporary(path, data), path))
    except BaseException:
        for tmp, _ in done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for i, (tmp, path) in enumerate(done):
        try:
            os.replace(tmp, path)
        except BaseException:
            for t, _ in done[i:]:
                with contextlib.suppress(OSError):
                    os.unlink(t)
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
