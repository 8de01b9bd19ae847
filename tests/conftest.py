from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from tests.helpers import REPO, default_params_tree, make_shapes_dataset


@pytest.fixture(scope="session")
def default_params() -> dict:
    """The project's params.yaml as committed (never the workspace's), parsed as the stages and DVC parse it."""
    return default_params_tree()


@pytest.fixture
def params_tree(default_params) -> dict:
    """A copy of params.yaml that a test may change."""
    return copy.deepcopy(default_params)


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """Three classes of coloured shapes, 20 images each (read-only: copy before changing)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes")


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; keep one test's store from leaking into the next."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# Left by tools, not by the tests' own writes.
_TOOL_LEFTOVERS = {".pytest_cache", ".ruff_cache", "__pycache__"}


@pytest.fixture(autouse=True)
def _workspace_untouched():
    """No test writes into the checkout: no new top-level entry (an ``mlruns/`` from an MLflow store whose
    artifact root defaulted to the working directory, say), and params.yaml as it was."""
    names = {path.name for path in REPO.iterdir()}
    params = (REPO / "params.yaml").read_bytes()
    yield
    added = sorted({path.name for path in REPO.iterdir()} - names - _TOOL_LEFTOVERS)
    assert not added, f"the test wrote {added} into the workspace {REPO}"
    assert (REPO / "params.yaml").read_bytes() == params, "the test changed the workspace's params.yaml"


# Modules whose tests share a module-scoped pipeline run (minutes each). Under pytest-xdist each worker that
# runs one of their tests builds its own, so each of these goes to a single worker as one unit, and every other
# test is a unit of its own. (xdist's `loadgroup` would do this from marks, but under pytest 9 the name it
# appends the group to is no longer the one it reads back, so its groups are silently ignored.)
ONE_WORKER_MODULES = frozenset({
    "tests/e2e/test_pipeline.py",
    "tests/e2e/test_real_world.py",
    "tests/e2e/test_serving.py",
    "tests/model/test_flowers.py",
})


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Slow tests first (a stable sort: each module keeps its order), so that at the end the short ones fill
        # in instead of one worker finishing a long test alone.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return SharedRunsTogether(config, log)


def pytest_configure(config):
    """Stages run through warm servers (transfer/warm.py) as they do for users, but this session's own: in a
    private folder of its own, idle for at most two minutes, and stopped at its end. Set in the controlling
    process, before any xdist worker starts, so every worker shares them."""
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("TRANSFER_WARM_DIR"):
        return
    import tempfile

    # Short: a socket's path must fit in 107 bytes.
    os.environ["TRANSFER_WARM_DIR"] = tempfile.mkdtemp(prefix="transfer-warm-tests-", dir="/tmp")
    os.environ.setdefault("TRANSFER_WARM_IDLE", "120")
    config._warm_folder = os.environ["TRANSFER_WARM_DIR"]


def pytest_unconfigure(config):
    folder = getattr(config, "_warm_folder", None)
    if folder is None:
        return
    import shutil
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "transfer.warm", "stop"], cwd=Path(__file__).resolve().parents[1],
                   capture_output=True, check=False)
    shutil.rmtree(folder, ignore_errors=True)
    os.environ.pop("TRANSFER_WARM_DIR", None)
