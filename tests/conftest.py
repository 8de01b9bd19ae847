from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from tests.helpers import default_params_tree, make_shapes_dataset


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
