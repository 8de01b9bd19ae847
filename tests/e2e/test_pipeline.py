"""The real `dvc repro` and `dvc exp run` on generated images, in a temporary git repository."""

import json

import pytest

from tests.helpers import make_pipeline_repo, make_shapes_dataset, run, stages_run

pytestmark = pytest.mark.slow

ALL_STAGES = ["download", "split", "extract-features", "train-head", "fine-tune", "evaluate"]
EVALUATE_FILES = ["per_class.json", "classification_report.txt", "classification_report.json", "confusion.json",
                  "confusion_matrix.png", "predictions.csv"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    source = make_shapes_dataset(base / "shapes", per_class=15, size=40)
    return make_pipeline_repo(base / "repo", {
        "data.source": str(source),
        # Randomly initialised MobileNets and EfficientNets give all-but-constant features; ResNet50's still
        # separate the shapes, so the test can check that the pipeline learns.
        "backbone": "resnet50",
        "weights": "none",
        "image_size": 32,
        "split.val": 0.2,
        "split.test": 0.2,
        "features.batch_size": 8,
        "head.epochs": 40,
        "head.batch_size": 8,
        "fine_tune.epochs": 1,
        "fine_tune.unfreeze": 5,
        "fine_tune.batch_size": 8,
    })


@pytest.fixture(scope="module")
def first_run(repo):
    result = run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "first run"], repo)
    return result


def test_repro_runs_all_six_stages_and_writes_every_report(repo, first_run):
    assert stages_run(first_run) == ALL_STAGES
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for key in ("accuracy", "loss", "top_k_accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert 0 <= metrics[key] <= (1 if key != "loss" else 100), key
    assert metrics["images"] == 9
    assert metrics["accuracy"] >= 0.6, "chance is 0.33: labels and predictions must line up end to end"
    for name in EVALUATE_FILES:
        assert (repo / "reports/evaluate" / name).stat().st_size > 0, name
    for path in ("models/model.keras", "models/head.keras", "reports/head/curves.png", "reports/data.json",
                 "reports/fine_tune/history.csv", "data/features/meta.json", "data/splits/classes.json"):
        assert (repo / path).stat().st_size > 0, path
    history = (repo / "reports/fine_tune/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 2


def test_a_second_repro_runs_nothing(repo, first_run):
    assert stages_run(run(["dvc", "repro"], repo)) == []
    assert "nothing to commit" in run(["git", "status"], repo).stdout


def test_the_same_params_give_the_same_results(repo, first_run):
    before = (repo / "reports/metrics.json").read_text()
    features = (repo / "data/features/train_features.npy").read_bytes()
    assert stages_run(run(["dvc", "repro", "--force"], repo)) == ALL_STAGES
    assert (repo / "reports/metrics.json").read_text() == before
    assert (repo / "data/features/train_features.npy").read_bytes() == features


def test_a_head_experiment_reuses_the_cached_features(repo, first_run):
    result = run(["dvc", "exp", "run", "-S", "head.lr=0.005"], repo)
    assert stages_run(result) == ["train-head", "fine-tune", "evaluate"]
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "0.005" in shown


def test_a_backbone_experiment_extracts_again(repo, first_run):
    result = run(["dvc", "exp", "run", "-S", "backbone=vgg16"], repo)
    assert stages_run(result) == ["extract-features", "train-head", "fine-tune", "evaluate"]
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo).stdout)
    assert "accuracy" in diff["reports/metrics.json"]
    assert json.loads((repo / "data/features/meta.json").read_text())["backbone"] == "vgg16"


def test_a_bad_param_fails_with_one_line_naming_the_key(repo, first_run):
    result = run(["dvc", "exp", "run", "-S", "head.dropout=1.5"], repo, check=False)
    assert result.returncode != 0
    assert "error: params.yaml: head.dropout = 1.5 is invalid: expected a number in [0.0, 1.0)" in result.stderr
    assert "Traceback" not in result.stderr
