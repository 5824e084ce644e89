import os
import sys

import pytest

# Make `tests.op_harness` importable as `op_harness` from every test module.
sys.path.insert(0, os.path.dirname(__file__))

# COVSEG_SHARED_DATA overrides the location (git worktrees do not sit beside ../shared).
SHARED_DATA = os.environ.get("COVSEG_SHARED_DATA") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(scope="session")
def shared_data() -> str:
    """Path of ../shared/data; skips the test with a reason when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared beside the checkout)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    # Under TRITON_INTERPRET=1, torch.compile around Triton ops cannot work: such tests skip.
    if os.environ.get("TRITON_INTERPRET") == "1":
        skip = pytest.mark.skip(reason="torch.compile does not run under TRITON_INTERPRET=1")
        for item in items:
            if "compile" in item.keywords:
                item.add_marker(skip)
