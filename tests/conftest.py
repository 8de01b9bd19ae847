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
