"""What kind of file system entry an input is, before anything opens it.

Opening a FIFO blocks until a writer appears (forever, in a batch), a device can stream without end and
a socket cannot be opened at all, so readers call :func:`regular_file` first: only regular files (after
following symbolic links) are read, everything else fails the case at once with a one-line reason.
"""
from __future__ import annotations

import errno
import os
import stat

from .volume import VolumeError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def entry_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a socket', ... for a stat mode ('a regular file' when it is one)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), f"a special file (mode {oct(stat.S_IFMT(mode))})")


def regular_file(path: str) -> os.stat_result:
    """``os.stat(path)`` when ``path`` is (a symbolic link to) a readable regular file.

    Raises:
        VolumeError: missing, a broken link or a link loop, not a regular file (FIFO, socket, device,
            directory), or not readable.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise VolumeError(f"file not found (a broken symbolic link to {os.readlink(path)})") from None
        raise VolumeError("file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VolumeError("a symbolic link loop (the link resolves to itself)") from None
        raise VolumeError(f"cannot stat the file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise VolumeError(f"not a regular file: it is {entry_kind(st.st_mode)}; only regular files are read")
    if not os.access(path, os.R_OK):
        raise VolumeError("permission denied (file not readable)")
    return st


def is_regular_file(path: str) -> bool:
    """True for (a link to) a regular file; never opens it and never raises."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
