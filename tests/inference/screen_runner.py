"""Run `covseg screen` in a fresh process, as the CLI would, with the test-only tiny model registered.

    python tests/inference/screen_runner.py [--as-nobody CKPT] screen ARGS...

With ``--as-nobody`` (the tests run as root, and root reads every file), the pipeline is first warmed
up once on the demo volume (so every module it imports lazily is loaded: the interpreter's own files
may not be readable for ``nobody``), then the process drops to user and group ``nobody`` and runs the
real command, for which files with mode 000 are unreadable.

With ``COVSEG_TEST_PEAK_RSS=PATH`` it writes its peak memory to PATH at the end: its own (``VmHWM``: the
memory map made by exec, so nothing of the parent that started it counts) and the largest of its reaped
worker processes (``RUSAGE_CHILDREN``), in MB. (A parent's own ``wait4``/``ru_maxrss`` of the child would
include the parent's size: Linux keeps the high-water mark of the address space the child had before exec.)
"""
import json
import os
import resource
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import tests.inference.tiny_model  # noqa: E402,F401  (registers the tiny model)
from covseg_fast.cli.main import main  # noqa: E402

NOBODY = 65534


def drop_privileges(checkpoint: str) -> None:
    warm = tempfile.mkdtemp()
    try:
        main(["screen", "--demo", "--checkpoint", checkpoint, "-o", warm, "--workers", "1", "--no-progress"])
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def write_peak_rss(path: str) -> None:
    with open("/proc/self/status") as fh:
        own_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(path, "w") as fh:
        json.dump({"main_mb": own_kb / 1024, "workers_mb": workers_kb / 1024}, fh)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--as-nobody"]:
        drop_privileges(args[1])
        args = args[2:]
    code = main(args)
    if os.environ.get("COVSEG_TEST_PEAK_RSS"):
        write_peak_rss(os.environ["COVSEG_TEST_PEAK_RSS"])
    sys.exit(code)
