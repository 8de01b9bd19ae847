"""The epoch-keeping bench: the stage's own fine-tune, captured, and each rule's pick (on generated images here)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO


def _row(epoch, smoothed, plain, calibrated, val_accuracy, test_accuracy):
    return {"epoch": epoch, "val_loss_smoothed": smoothed, "val_cross_entropy": plain,
            "val_calibrated_cross_entropy": calibrated, "val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
            "test_cross_entropy": 0.0}


def test_each_rule_picks_on_validation_alone_and_the_first_of_equals_wins():
    from bench.epochs import picks

    table = [_row(0, 0.60, 0.30, 0.30, 0.90, 0.86),
             _row(1, 0.50, 0.40, 0.28, 0.90, 0.90),
             _row(2, 0.50, 0.35, 0.29, 0.92, 0.84),
             _row(3, 0.55, 0.45, 0.31, 0.92, 0.88)]
    chosen = picks(table)
    assert {name: pick["epoch"] for name, pick in chosen.items()} == {
        "smoothed_validation_loss": 1,  # 1 and 2 tie: the first, as the stage keeps it
        "validation_cross_entropy": 0,
        "calibrated_cross_entropy": 1,
        "validation_accuracy": 2,  # 2 and 3 tie on accuracy: the lower cross-entropy
        "head": 0, "last_epoch": 3, "best_on_test_in_hindsight": 1}
    assert chosen["validation_accuracy"]["test_accuracy"] == 0.84


def test_the_ensemble_row_averages_the_heads_and_the_kept_epochs_probabilities_photo_by_photo():
    from bench.epochs import averaged_with_head

    # Photos of class 0 and 1: the head is mildly wrong on the first and sure of the second, epoch 2 the other
    # way round, so each alone gets one right and their average both.
    captured = {"test": np.array([[[0.45, 0.55], [0.1, 0.9]],
                                  [[0.5, 0.5], [0.5, 0.5]],
                                  [[0.9, 0.1], [0.6, 0.4]]]), "test_y": np.array([0, 1])}
    assert averaged_with_head(captured, 2) == {"epoch": 2, "test_accuracy": 1.0}
    assert averaged_with_head(captured, 0)["test_accuracy"] == 0.5  # the head with itself: the head


def test_the_losses_are_what_keras_reports_for_a_softmax_and_a_fitted_temperature_never_raises_them():
    import keras

    from bench.epochs import calibrated_cross_entropy, cross_entropy

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 6, size=(40, 5)).astype(np.float32)  # some probabilities far below Keras' 1e-7
    probabilities = np.asarray(keras.ops.softmax(logits))
    labels = rng.integers(0, 5, size=40)
    assert probabilities.min() < 1e-9
    for smoothing in (0.0, 0.1):
        # A softmax output carries its logits, and Keras' loss uses them: no clipping at its epsilon.
        expected = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing, from_logits=True)(
            np.eye(5, dtype=np.float32)[labels], logits)
        assert cross_entropy(probabilities, labels, smoothing) == pytest.approx(float(expected), rel=1e-5)
    assert calibrated_cross_entropy(probabilities, labels) <= cross_entropy(probabilities, labels) + 1e-9


def test_a_setting_the_capture_cannot_follow_is_refused_by_name(tmp_path):
    result = subprocess.run([sys.executable, "bench/epochs.py", "--quick", "--set", "fine_tune.blend=0.5",
                             "--out", str(tmp_path / "epochs.json")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "fine_tune.blend" in result.stderr
    assert not (tmp_path / "epochs.json").exists()


@pytest.mark.slow
def test_quick_epochs_bench_captures_every_epoch_the_stage_scored_and_agrees_with_its_pick(tmp_path):
    out, kept = tmp_path / "epochs.json", tmp_path / "probabilities"
    result = subprocess.run(
        [sys.executable, "bench/epochs.py", "--quick", "--seeds", "1", "--probabilities", str(kept),
         "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (backbone, record), = json.loads(out.read_text())["backbones"].items()
    run = record["per_seed"]["0"]
    assert [row["epoch"] for row in run["epochs"]] == [0, 1, 2], "epoch 0 and the two quick epochs"
    assert run["picks"]["smoothed_validation_loss"]["epoch"] == run["stage_kept_epoch"]
    assert run["largest_val_loss_gap_to_the_stage"] < 1e-3 and run["label_smoothing"] == 0.1
    assert run["picks"]["best_on_test_in_hindsight"]["test_accuracy"] == max(
        row["test_accuracy"] for row in run["epochs"])
    assert set(record["summary"]) == set(run["picks"])
    assert run["picks"]["head_and_kept_averaged"]["epoch"] == run["stage_kept_epoch"]
    captured = np.load(kept / f"{backbone}_seed0.npz")
    assert captured["val"].shape == (3, len(captured["val_y"]), 3) and captured["test"].shape[1] == 12
    np.testing.assert_allclose(captured["test"].sum(axis=2), 1.0, atol=1e-4)
    for name in ("smoothed_validation_loss", "calibrated_cross_entropy", "best_on_test_in_hindsight"):
        assert name in result.stdout, "the table names every rule"
