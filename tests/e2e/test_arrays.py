"""An array data set through the real `dvc repro`: a .npz with its own test split, VGG16 cut at block3_pool, the
data-quality report off."""

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SHAPES, make_pipeline_repo, run, shape_image, stages_run
from transfer.io import read_json

pytestmark = pytest.mark.slow


def shapes_npz(path: Path, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """32x32 shapes as Keras lays out its array data sets: x_train, y_train, x_test, y_test, and the names."""
    rng = np.random.default_rng(seed)

    def images(count):
        rows = [(np.asarray(shape_image(kind, 32, rng)), label) for label, kind in enumerate(SHAPES)
                for _ in range(count)]
        return np.stack([x for x, _ in rows]), np.array([[label] for _, label in rows], dtype=np.uint8)

    (x_train, y_train), (x_test, y_test) = images(per_class), images(test_per_class)
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                        classes=np.array(list(SHAPES)))
    return path


def test_a_npz_with_its_own_test_split_runs_through_dvc_repro_on_a_cut_vgg16(tmp_path):
    source = shapes_npz(tmp_path / "shapes.npz", per_class=30, test_per_class=10)
    repo = make_pipeline_repo(tmp_path / "repo", {
        "data.source": str(source),
        "backbone": "vgg16",
        "weights": "none",
        "features.layer": "block3_pool",
        "image_size": 32,
        "features.batch_size": 16,
        "head.epochs": 60,
        "head.batch_size": 16,
        "fine_tune.epochs": 1,
        "fine_tune.unfreeze": 3,
        "fine_tune.batch_size": 16,
        # The data-quality report is off, as for a large array set (its cost grows with the square of the images).
        "quality.report": False,
    })
    result = run(["dvc", "repro"], repo)
    assert stages_run(result) == ["download", "split", "extract-features", "train-head", "fine-tune", "evaluate"]
    data = read_json(repo / "reports" / "data.json")
    assert data["layout"] == "arrays (.npz)"
    assert data["test_split"] == "shipped with the data set (30 images); split.test is not used"
    assert data["split_sizes"]["test"] == 30 and data["classes"] == sorted(SHAPES)
    assert read_json(repo / "data" / "features" / "meta.json")["feature_dim"] == 256
    metrics = read_json(repo / "reports" / "metrics.json")
    assert metrics["images"] == 30, "scored on the shipped test split"
    assert metrics["accuracy"] > 0.6, "random VGG16 blocks 1-3 still tell coloured shapes apart"
    assert read_json(repo / "reports" / "data_quality" / "metrics.json") == {"checked": False}
    assert sorted(path.name for path in (repo / "reports" / "data_quality").iterdir()) == [
        "label_issues.png", "metrics.json", "outliers.png"], "no CSV that would read as 'none found'"
    assert metrics["leaked_test_images"] is None and metrics["accuracy_without_leaked"] is None, "not checked"
    assert "data quality: not checked (quality.report is false)" in result.stdout + result.stderr

    import keras

    model = keras.saving.load_model(repo / "models" / "model.keras")
    names = [layer.name for layer in model.get_layer("backbone").layers]
    assert "block3_pool" in names and not any(name.startswith(("block4", "block5")) for name in names)

    head = run(["dvc", "exp", "run", "-S", "head.lr=0.003"], repo)
    assert "extract-features" not in stages_run(head) and "train-head" in stages_run(head)


def test_the_study_queues_transfer_and_both_from_scratch_models_and_compares_them(tmp_path):
    """bench/study.py --quick: the three queued experiments of docs/experiments.md on generated 32x32 arrays, then the
    comparison as `dvc exp show` and MLflow give it."""
    import mlflow

    from bench.study import STUDY, generated_npz, run_study

    source = str(generated_npz(tmp_path / "shapes.npz", 300))
    result = run_study(source, offline=True, quick=True, workdir=tmp_path)
    assert result["queue_status"].count("Success") == 3 and "Failed" not in result["queue_status"]
    accuracy = {name: row["test_accuracy"] for name, row in result["experiments"].items()}
    assert set(accuracy) == set(STUDY)
    assert accuracy["dense"] > 0.8 and accuracy["small-cnn"] > 0.8, accuracy  # chance: 0.33
    assert accuracy["vgg16-block3"] > 0.6, accuracy  # random weights here: ImageNet's need a network
    assert all(name in result["exp_show"] for name in STUDY)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("transfer").experiment_id])
    logged = {run.data.params["backbone"]: run.data.metrics["accuracy"] for run in runs}
    assert logged == {"flatten": accuracy["dense"], "small_cnn": accuracy["small-cnn"],
                      "vgg16": accuracy["vgg16-block3"]}
