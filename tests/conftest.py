import os
import sys

import pytest

# Make `tests.op_harness` importable as `op_harness` from every test module.
sys.path.insert(0, os.path.dirname(__file__))

# ../shared/data beside the checkout; COVSEG_SHARED_DATA overrides (e.g. for a git worktree elsewhere).
SHARED_DATA = os.environ.get("COVSEG_SHARED_DATA") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture()
def open_tmp():
    """A temporary folder every user may enter (pytest's tmp_path lies under root's private folder), for
    tests that drop privileges (tests/privileges.py)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="covseg_test_")
    os.chmod(path, 0o755)
    yield path
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> str:
    """Path of ../shared/data; skips the test with a reason when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data not found at {SHARED_DATA}: put ../shared beside the checkout or set "
                    "COVSEG_SHARED_DATA to the data folder")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    # Under TRITON_INTERPRET=1, torch.compile around Triton ops cannot work: such tests skip.
    if os.environ.get("TRITON_INTERPRET") == "1":
        skip = pytest.mark.skip(reason="torch.compile does not run under TRITON_INTERPRET=1")
        for item in items:
            if "compile" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _screen_backend_torch(request, monkeypatch):
    """`covseg screen` runs eager torch in tests (as ``--backend torch``) unless a test is marked
    ``default_backend``: the default ``auto`` exports the model to ONNX in every new output folder (seconds per
    test, and a ``.covseg_cache`` folder the output-folder tests do not expect). The backends themselves, the
    ``auto`` default included, are tested in tests/inference/test_backends.py."""
    if "default_backend" not in request.keywords:
        monkeypatch.setenv("COVSEG_SCREEN_BACKEND", "torch")
