"""Script run by torchrun in test_ddp: `covseg train` on a tiny model and a test-local slice reader."""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import covseg_fast.train.datasets as tds  # noqa: E402
from covseg_fast.cli.main import main  # noqa: E402
from tests.train._tiny import NAME  # noqa: E402,F401  (registers the tiny model)
from tests.train.test_cli_train import FolderSlices  # noqa: E402

tds.slice_dataset_class = lambda: FolderSlices
sys.exit(main(["train", "--model", NAME] + sys.argv[1:]))
