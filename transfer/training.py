"""Fitting a model: seeds, class weights, augmentation, early stopping, and the history it leaves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from transfer.io import write_csv
from transfer.params import AugmentParams, TrainingParams

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic: same params, same results."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """``balanced``: weight each class by n_samples / (n_classes * n_in_class); ``none``: no weights."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def compile_for_training(model, lr: float, label_smoothing: float) -> None:
    """Compile with Adam and categorical cross-entropy on one-hot targets. Call again after changing ``trainable``."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def augmenter(augment: AugmentParams, seed: int):
    """The training-time augmentation as a Keras pipeline, or None when every option is off."""
    import keras

    layers = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation, seed=seed + 1))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom, seed=seed + 2))
    return keras.Sequential(layers, name="augment") if layers else None


def fit(
    model, train, validation, params: TrainingParams, class_weight: dict[int, float] | None
) -> list[dict[str, Any]]:
    """Train with early stopping on validation loss that restores the best epoch's weights.

    Args:
        model: a compiled model.
        train: a ``tf.data`` dataset of (inputs, one-hot), or an (inputs, one-hot) tuple of arrays.
        validation: the same for validation, or None to monitor the training loss.
        params: epochs, batch size (for arrays) and patience.
        class_weight: per-class loss weights, or None.

    Returns:
        One row per epoch run, with the columns of :data:`HISTORY_COLUMNS` (epoch counts from 1).
    """
    import keras

    monitor = "val_loss" if validation is not None else "loss"
    stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=params.patience, restore_best_weights=True)
    arrays = isinstance(train, tuple)
    history = model.fit(
        train[0] if arrays else train,
        train[1] if arrays else None,
        batch_size=params.batch_size if arrays else None,
        epochs=params.epochs,
        validation_data=validation,
        class_weight=class_weight,
        callbacks=[stop],
        shuffle=arrays,  # a dataset shuffles itself
        verbose=2,
    ).history
    rows = []
    for epoch in range(len(history["loss"])):
        row = {column: history[column][epoch] if column in history else None for column in HISTORY_COLUMNS}
        rows.append({**row, "epoch": epoch + 1})
    return rows


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per-epoch history as CSV with an ``epoch`` column (header only when no epoch ran)."""
    write_csv(path, HISTORY_COLUMNS, ([row[column] for column in HISTORY_COLUMNS] for row in rows))


def best_epoch(rows: list[dict[str, Any]]) -> int:
    """The epoch (from 1) whose weights early stopping kept, 0 when no epoch ran."""
    if not rows:
        return 0
    key = "val_loss" if rows[0]["val_loss"] is not None else "loss"
    return min(rows, key=lambda row: row[key])["epoch"]
