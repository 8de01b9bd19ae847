"""dvc.yaml tells the truth: each stage declares exactly the params it reads and the code it imports.

A param read but not declared gives stale results; one declared but not read re-runs stages for nothing.
"""

import importlib.util
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, transfer_imports
from transfer import layout
from transfer.params import Params

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC["stages"]
PIPELINE = ["download", "split", "extract-features", "train-head", "fine-tune", "evaluate"]


def _script(stage: str) -> Path:
    return REPO / "stages" / f"{stage.replace('-', '_')}.py"


def _load_stage(stage: str):
    spec = importlib.util.spec_from_file_location(f"stage_{stage.replace('-', '_')}", _script(stage))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_closure(script: Path) -> set[str]:
    """Repository-relative paths of the script and every project module it runs, transitively."""
    files, pending = {script}, [script]
    while pending:
        for module in transfer_imports(pending.pop()):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # importing transfer.x runs transfer/__init__.py too
                candidate = REPO.joinpath(*parts[:depth])
                path = candidate / "__init__.py" if candidate.is_dir() else candidate.with_suffix(".py")
                if path.exists() and path not in files:
                    files.add(path)
                    pending.append(path)
    return {path.relative_to(REPO).as_posix() for path in files}


def test_stages_are_the_six_scripts_in_pipeline_order():
    assert list(STAGES) == PIPELINE
    assert sorted(path.name for path in (REPO / "stages").glob("*.py")) == sorted(_script(s).name for s in PIPELINE)
    for stage in PIPELINE:
        assert STAGES[stage]["cmd"] == f"python stages/{_script(stage).name}"


@pytest.mark.parametrize("stage", PIPELINE)
def test_declared_params_are_exactly_the_params_read(stage, params_tree):
    params = Params(params_tree)
    _load_stage(stage).parse_params(params)
    assert params.keys_read == set(STAGES[stage].get("params", []))


@pytest.mark.parametrize("stage", PIPELINE)
def test_declared_code_is_exactly_the_code_run(stage):
    declared = {dep for dep in STAGES[stage]["deps"] if dep.endswith(".py")}
    assert declared == _code_closure(_script(stage))


def test_every_param_is_read_by_some_stage(default_params):
    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    declared = {key for stage in STAGES.values() for key in stage.get("params", [])}
    assert set(leaves(default_params)) == declared


def test_every_layout_path_is_a_declared_output():
    outs = {out if isinstance(out, str) else next(iter(out))  # an out with options is a one-key mapping
            for stage in STAGES.values() for out in stage.get("outs", [])}
    paths = [value for value in vars(layout).values() if isinstance(value, Path) and value.suffix]
    for path in paths:
        assert any(path.as_posix() == out or path.as_posix().startswith(out + "/") for out in outs), path


def test_metrics_and_plots_are_declared_at_the_top():
    assert "reports/metrics.json" in DVC["metrics"]
    plot_files = [next(iter(entry)) if isinstance(entry, dict) else entry for entry in DVC["plots"]]
    assert "reports/evaluate/confusion.json" in plot_files
