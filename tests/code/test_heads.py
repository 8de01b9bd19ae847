"""Heads: the layouts of the workflows this grew from, and learning on separable features."""

import numpy as np
import pytest

from transfer.heads import build_head
from transfer.params import TrainingParams
from transfer.training import class_weights, compile_for_training, fit, set_determinism


def _layer_kinds(model):
    return [type(layer).__name__ for layer in model.layers[1:]]


@pytest.mark.parametrize(
    ("hidden", "dropout", "batchnorm", "kinds"),
    [
        ([128], 0.5, False, ["Dense", "Dropout", "Dense"]),
        ([], 0.2, True, ["BatchNormalization", "Dropout", "Dense"]),
        ([400, 256, 256], 0.2, True,
         ["BatchNormalization", "Dense", "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense"]),
        ([], 0.0, False, ["Dense"]),
    ],
)
def test_the_workflow_heads_are_expressible(hidden, dropout, batchnorm, kinds):
    head = build_head(64, 5, hidden, dropout, batchnorm)
    assert _layer_kinds(head) == kinds
    assert head.output_shape == (None, 5)
    assert [layer.units for layer in head.layers if type(layer).__name__ == "Dense"] == [*hidden, 5]


def test_the_head_learns_separable_features():
    set_determinism(0)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(4, 32))
    labels = rng.integers(0, 4, size=400)
    features = (centres[labels] + rng.normal(0, 1, size=(400, 32))).astype("float32")
    one_hot = np.eye(4, dtype="float32")[labels]
    head = build_head(32, 4, [16], 0.2, True)
    compile_for_training(head, 1e-2, 0.0)
    params = TrainingParams(lr=1e-2, epochs=30, batch_size=32, patience=3, label_smoothing=0.0, class_weight="none")
    rows = fit(head, (features[:300], one_hot[:300]), (features[300:], one_hot[300:]), params, None)
    accuracy = np.mean(head.predict(features[300:], verbose=0).argmax(1) == labels[300:])
    assert accuracy > 0.9, f"chance is 0.25, got {accuracy}"
    assert rows[0]["epoch"] == 1 and set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}


def test_early_stopping_restores_the_best_epoch():
    set_determinism(0)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(64, 8)).astype("float32")
    one_hot = np.eye(2, dtype="float32")[rng.integers(0, 2, size=64)]  # pure noise: validation loss soon rises
    head = build_head(8, 2, [64], 0.0, False)
    compile_for_training(head, 5e-2, 0.0)
    params = TrainingParams(lr=5e-2, epochs=40, batch_size=8, patience=2, label_smoothing=0.0, class_weight="none")
    rows = fit(head, (features[:48], one_hot[:48]), (features[48:], one_hot[48:]), params, None)
    best = min(row["val_loss"] for row in rows)
    assert len(rows) < 40, "training should have stopped early"
    restored = head.evaluate(features[48:], one_hot[48:], verbose=0, return_dict=True)["loss"]
    assert restored == pytest.approx(best, rel=1e-4)


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0), 2: 0.0}
    assert class_weights(np.array([0, 1]), 2, "none") is None
