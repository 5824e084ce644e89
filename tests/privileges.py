"""Run a function as a user other than root: the tests run as root, and root reads and writes everything."""
from __future__ import annotations

import os
import pickle
import traceback

import pytest

NOBODY = 65534


def as_unprivileged(fn, *args):
    """``fn(*args)`` in a forked child running as user/group ``nobody`` (or in this process when it is not
    root already); returns its result, or re-raises its exception (as AssertionError with the traceback).

    Only modules already imported are usable in the child (the interpreter's files may be unreadable for
    ``nobody``): import what ``fn`` needs before calling. Skips the test when root cannot become nobody.
    """
    if os.geteuid() != 0:
        return fn(*args)
    try:
        import pwd

        pwd.getpwuid(NOBODY)
    except (ImportError, KeyError):
        pytest.skip("running as root and there is no user 'nobody' to drop privileges to")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = ("ok", fn(*args))
        except BaseException:  # noqa: BLE001 (everything goes back to the parent)
            payload = ("error", traceback.format_exc())
        with os.fdopen(w, "wb") as fh:
            pickle.dump(payload, fh)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"as nobody:\n{value}")
    return value

