"""Script run by torchrun in test_ddp: `covseg train` on a tiny model and a small slice folder."""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from covseg_fast.cli.main import main  # noqa: E402
from tests.train._tiny import NAME  # noqa: E402,F401  (registers the tiny model)
sys.exit(main(["train", "--model", NAME] + sys.argv[1:]))
