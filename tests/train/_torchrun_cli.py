"""Script run by torchrun in test_ddp: `covseg train` on a tiny model and a small slice folder."""
import faulthandler
import os
import sys

# A rank that hangs (one CI run timed out after both ranks had finished training) prints every thread's
# stack and exits, so the test fails with the place it hung instead of a bare timeout.
faulthandler.dump_traceback_later(90, exit=True)

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from covseg_fast.cli.main import main  # noqa: E402
from tests.train._tiny import NAME  # noqa: E402,F401  (registers the tiny model)
sys.exit(main(["train", "--model", NAME] + sys.argv[1:]))
