"""Heads: the layouts of the workflows this grew from, and learning on separable features."""

import numpy as np
import pytest

from transfer.model.heads import build_head
from transfer.model.stopping import KeepBest, best_epoch, cap_note
from transfer.model.training import (
    blend_weights,
    class_weights,
    compile_for_training,
    compile_with,
    fit,
    learning_rate,
    set_determinism,
)
from transfer.schema import TrainingParams


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


def _noise_task():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(64, 8)).astype("float32")
    one_hot = np.eye(2, dtype="float32")[rng.integers(0, 2, size=64)]
    return (features[:48], one_hot[:48]), (features[48:], one_hot[48:])


def test_epoch_zero_is_kept_when_no_epoch_beats_it():
    set_determinism(0)
    train, validation = _noise_task()
    head = build_head(8, 2, [16], 0.0, False)
    compile_for_training(head, 5e-2, 0.0)
    before = [np.array(w) for w in head.get_weights()]
    params = TrainingParams(lr=5e-2, epochs=6, batch_size=8, patience=2, label_smoothing=0.0, class_weight="none")
    rows = fit(head, train, validation, params, None, start=0.0)  # a loss no epoch can reach
    assert rows and all(row["val_loss"] > 0.0 for row in rows)
    for old, new in zip(before, head.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new, err_msg="the starting weights were not kept")
    assert best_epoch([{"epoch": 0, "loss": None, "accuracy": None, "val_loss": 0.0, "val_accuracy": 1.0},
                       *rows]) == 0


def _rows(losses: list[float], start: float | None = None) -> list[dict]:
    rows = [{"epoch": 0, "loss": None, "accuracy": None, "val_loss": start, "val_accuracy": None}] if start else []
    return rows + [{"epoch": number, "loss": 1.0, "accuracy": 0.5, "val_loss": loss, "val_accuracy": 0.5}
                   for number, loss in enumerate(losses, start=1)]


def test_the_log_says_when_the_epoch_cap_stopped_training_still_improving():
    params = TrainingParams(lr=1e-3, epochs=5, batch_size=8, patience=2, label_smoothing=0.0, class_weight="none")
    still_falling = cap_note(_rows([0.9, 0.8, 0.7, 0.6, 0.5]), params, "head")
    assert still_falling == ("training stopped at its cap of 5 epochs still improving (val_loss lowest at epoch 5, "
                             "within the last head.patience = 2): a higher head.epochs may find a better model")
    assert "lowest at epoch 4" in cap_note(_rows([0.9, 0.8, 0.7, 0.5, 0.6]), params, "fine_tune")
    # Early stopping's own business: the lowest 2 epochs back ends training at the cap anyway.
    assert cap_note(_rows([0.9, 0.8, 0.5, 0.6, 0.7]), params, "head") is None
    assert cap_note(_rows([0.9, 0.8, 0.5]), params, "head") is None  # stopped early: under the cap
    # Fine-tune's epoch 0 (the head as it came) is not a trained epoch: five trained epochs still reach the cap.
    assert cap_note(_rows([0.9, 0.8, 0.7, 0.6, 0.5], start=0.95), params, "fine_tune").startswith(
        "training stopped at its cap of 5 epochs")
    no_patience = TrainingParams(lr=1e-3, epochs=3, batch_size=8, patience=0, label_smoothing=0.0,
                                 class_weight="none")
    assert cap_note(_rows([0.9, 0.8, 0.7]), no_patience, "head") is not None
    assert cap_note(_rows([0.7, 0.8, 0.9]), no_patience, "head") is None


class _Weights:
    """Stands in for a model: its weights are the number of the epoch that set them (0 before training)."""

    def __init__(self):
        self.epoch = 0

    def get_weights(self):
        return [self.epoch]

    def set_weights(self, weights):
        self.epoch = weights[0]


def test_patience_counts_the_trained_epochs_and_a_better_start_is_still_kept():
    """A start no epoch beats decides what is kept, not when to stop: training that still improves goes on."""
    model = _Weights()
    rule = KeepBest(model, patience=2, start=0.5)
    stops = []
    for epoch, loss in enumerate([1.0, 0.9, 0.8, 0.7, 0.75, 0.72], start=1):
        model.epoch = epoch
        stops.append(rule.update(loss))
    assert stops == [False, False, False, False, False, True], "two epochs without beating 0.7, the trained best"
    rule.restore()
    assert model.epoch == 0, "no epoch beat the start: its weights are restored"

    model = _Weights()
    rule = KeepBest(model, patience=2, start=0.5)
    for epoch, loss in enumerate([0.9, 0.6, 0.4, 0.45], start=1):
        model.epoch = epoch
        assert not rule.update(loss)
    rule.restore()
    assert model.epoch == 3 and rule.best == 0.4


def _three_clusters():
    """240 points in 16 dimensions around three separated centres: (features, one-hot labels)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = rng.integers(0, 3, size=240)
    return (centres[labels] + rng.normal(size=(240, 16))).astype("float32"), np.eye(3, dtype="float32")[labels]


def test_an_epoch_that_beats_epoch_zero_is_kept():
    set_determinism(0)
    features, one_hot = _three_clusters()
    head = build_head(16, 3, [], 0.0, False)
    compile_for_training(head, 1e-2, 0.0)
    validation = (features[200:], one_hot[200:])
    start = head.evaluate(*validation, verbose=0, return_dict=True)["loss"]
    params = TrainingParams(lr=1e-2, epochs=10, batch_size=16, patience=2, label_smoothing=0.0, class_weight="none")
    rows = fit(head, (features[:200], one_hot[:200]), validation, params, None, start=start)
    kept = head.evaluate(*validation, verbose=0, return_dict=True)["loss"]
    assert kept == pytest.approx(min(row["val_loss"] for row in rows), rel=1e-4) and kept < start / 2


def test_warmup_then_cosine_decay():
    params = TrainingParams(lr=3e-4, epochs=5, batch_size=8, patience=2, label_smoothing=0.0, class_weight="none",
                            optimizer="adamw", weight_decay=1e-4, schedule="cosine", warmup_epochs=1)
    schedule = learning_rate(params, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in range(0, 51)]
    assert rates[0] == 0.0 and rates[5] == pytest.approx(1.5e-4) and rates[10] == pytest.approx(3e-4)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False)), "decays after the warmup"
    assert rates[30] == pytest.approx(1.5e-4, rel=1e-3) and rates[50] == pytest.approx(0.0, abs=1e-9)
    constant = TrainingParams(lr=1e-3, epochs=5, batch_size=8, patience=2, label_smoothing=0.0, class_weight="none")
    assert learning_rate(constant, steps_per_epoch=10) == 1e-3


def test_adamw_is_compiled_with_its_weight_decay():
    params = TrainingParams(lr=1e-3, epochs=1, batch_size=8, patience=1, label_smoothing=0.1, class_weight="none",
                            optimizer="adamw", weight_decay=1e-4)
    head = build_head(4, 2, [], 0.0, False)
    compile_with(head, params, train_examples=24)
    assert type(head.optimizer).__name__ == "AdamW" and head.optimizer.weight_decay == pytest.approx(1e-4)
    assert head.loss.label_smoothing == pytest.approx(0.1)


def test_a_scorer_sharing_the_weights_scores_validation_in_place_of_the_trained_model():
    """Fine-tuning trains one view of a mirror-averaging classifier and keeps the epoch the classifier scores best."""
    import keras

    set_determinism(0)
    features, one_hot = _three_clusters()
    head = build_head(16, 3, [], 0.0, False)
    inputs = keras.Input((16,))
    scorer = keras.Model(inputs, head(inputs * 0.5))  # the same weights, seen through another input
    compile_for_training(head, 1e-2, 0.0)
    compile_for_training(scorer, 1e-2, 0.0)
    validation = (features[200:], one_hot[200:])
    params = TrainingParams(lr=1e-2, epochs=6, batch_size=16, patience=2, label_smoothing=0.0, class_weight="none")
    rows = fit(head, (features[:200], one_hot[:200]), validation, params, None, scorer=scorer)
    kept = scorer.evaluate(*validation, verbose=0, return_dict=True)
    assert kept["loss"] == pytest.approx(min(row["val_loss"] for row in rows), rel=1e-4)
    best = min(rows, key=lambda row: row["val_loss"])
    assert kept["accuracy"] == pytest.approx(best["val_accuracy"])
    own = head.evaluate(*validation, verbose=0, return_dict=True)["loss"]
    assert abs(own - kept["loss"]) > 1e-3, "the rows are the scorer's, not the trained model's"


def test_the_head_search_tries_the_params_first_then_seeded_draws_around_them():
    from dataclasses import replace

    from transfer.model.heads import SEARCH_DROPOUTS, SEARCH_HIDDEN, SEARCH_LR_SPAN, search_settings, setting_row
    from transfer.schema import HeadParams

    training = TrainingParams(lr=1e-3, epochs=50, batch_size=32, patience=7, label_smoothing=0.0,
                              class_weight="balanced")
    base = HeadParams(hidden=(), dropout=0.5, batchnorm=False, training=training, search=8)
    settings = search_settings(base, 8, seed=3)
    assert settings[0] is base and len(settings) == len(set(settings)) == 8
    assert search_settings(base, 8, seed=3) == settings, "the same seed tries the same settings"
    assert search_settings(base, 8, seed=4) != settings
    assert search_settings(base, 0, seed=3) == search_settings(base, 1, seed=3) == [base]
    for drawn in settings[1:]:
        assert 10 ** -SEARCH_LR_SPAN <= drawn.training.lr / base.training.lr <= 10 ** SEARCH_LR_SPAN * 1.001
        assert drawn.dropout in SEARCH_DROPOUTS and drawn.hidden in SEARCH_HIDDEN
        assert drawn.training.optimizer == ("adamw" if drawn.training.weight_decay else "adam")
        kept = replace(drawn.training, lr=training.lr, label_smoothing=0.0, weight_decay=0.0, optimizer="adam")
        assert kept == training, "epochs, batch, patience, class weights and schedule stay as written"
    assert setting_row(replace(base, hidden=(256, 128))) == {
        "lr": 1e-3, "dropout": 0.5, "hidden": "256 128", "label_smoothing": 0.0, "weight_decay": 0.0,
        "optimizer": "adam"}


def test_blending_puts_each_trained_weight_on_the_line_from_its_start():
    set_determinism(0)
    head = build_head(4, 3, [5], 0.0, True)  # BatchNormalization: statistics that do not train
    start = [np.array(variable.numpy()) for variable in head.trainable_variables]
    frozen_before = [np.array(variable.numpy()) for variable in head.non_trainable_variables]
    compile_for_training(head, 0.1, 0.0)
    rng = np.random.default_rng(0)
    head.fit(rng.normal(size=(32, 4)).astype("float32"), np.eye(3, dtype="float32")[rng.integers(0, 3, 32)],
             epochs=2, verbose=0)
    trained = [np.array(variable.numpy()) for variable in head.trainable_variables]
    assert all(not np.allclose(a, b) for a, b in zip(start, trained, strict=True)), "every trainable array moved"
    frozen_after = [np.array(variable.numpy()) for variable in head.non_trainable_variables]
    blend_weights(head.trainable_variables, start, 0.25)
    for variable, before, after in zip(head.trainable_variables, start, trained, strict=True):
        np.testing.assert_allclose(variable.numpy(), before + 0.25 * (after - before), rtol=1e-6, atol=1e-7)
    statistics = head.non_trainable_variables
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(frozen_after, statistics, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(frozen_before, frozen_after, strict=True)), "fit moved them"
    blend_weights(head.trainable_variables, start, 0.0)
    restored = zip(head.trainable_variables, start, strict=True)
    assert all(np.allclose(variable.numpy(), before) for variable, before in restored)
    with pytest.raises(ValueError, match="3 variables against"):
        blend_weights(head.trainable_variables[:3], start, 0.5)
