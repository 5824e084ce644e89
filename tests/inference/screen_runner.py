"""Run `covseg screen` in a fresh process, as the CLI would, with the test-only tiny model registered.

    python tests/inference/screen_runner.py [--as-nobody CKPT] screen ARGS...

With ``--as-nobody`` (the tests run as root, and root reads every file), the pipeline is first warmed
up once on the demo volume (so every module it imports lazily is loaded: the interpreter's own files
may not be readable for ``nobody``), then the process drops to user and group ``nobody`` and runs the
real command, for which files with mode 000 are unreadable.
"""
import os
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


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--as-nobody"]:
        drop_privileges(args[1])
        args = args[2:]
    sys.exit(main(args))
