"""Fitting a model: seeds, class weights, the optimiser and its schedule, ``fit`` with early stopping, and the
history it leaves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from transfer.data.pipeline import array_dataset
from transfer.io import write_csv
from transfer.model.across_hosts import fit_across_hosts
from transfer.model.scoring import score
from transfer.model.stopping import KeepBest
from transfer.schema import TrainingParams

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


def learning_rate(params: TrainingParams, steps_per_epoch: int):
    """The learning rate: ``params.lr`` throughout, or a linear warmup to it then a cosine decay to zero.

    Args:
        params: ``lr``, ``schedule`` (``constant`` or ``cosine``), ``warmup_epochs`` and ``epochs``.
        steps_per_epoch: optimizer steps in one epoch, which turns epochs into steps.

    Returns:
        A float, or a ``keras.optimizers.schedules.LearningRateSchedule``.
    """
    import keras

    if params.schedule == "constant":
        return params.lr
    total = max(1, params.epochs * steps_per_epoch)
    warmup = min(params.warmup_epochs * steps_per_epoch, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else params.lr,
        decay_steps=total - warmup,
        warmup_target=params.lr if warmup else None,
        warmup_steps=warmup,
    )


def compile_for_training(model, lr, label_smoothing: float = 0.0, optimizer: str = "adam",
                         weight_decay: float = 0.0) -> None:
    """Compile with Adam, AdamW or plain SGD and categorical cross-entropy on one-hot targets.

    Call again after changing ``trainable``: Keras fixes the trainable variables when it compiles.

    Args:
        model: the model to compile.
        lr: a learning rate, or a schedule from :func:`learning_rate`.
        label_smoothing: the cross-entropy's label smoothing.
        optimizer: ``adam``, ``adamw`` (decoupled weight decay) or ``sgd`` (plain, no momentum).
        weight_decay: AdamW's decay per step, relative to the learning rate; unused by Adam.
    """
    import keras

    if optimizer == "adamw":
        chosen = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        chosen = keras.optimizers.SGD(learning_rate=lr)
    else:
        chosen = keras.optimizers.Adam(learning_rate=lr)
    model.compile(
        optimizer=chosen,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def compile_with(model, params: TrainingParams, train_examples: int) -> None:
    """:func:`compile_for_training` with a stage's training params (optimizer, schedule, decay, smoothing).

    Args:
        model: the model to compile.
        params: the stage's training params.
        train_examples: how many examples one epoch trains on, which with the batch size sets its steps.
    """
    steps_per_epoch = max(1, math.ceil(train_examples / params.batch_size))
    compile_for_training(model, learning_rate(params, steps_per_epoch), params.label_smoothing, params.optimizer,
                         params.weight_decay)


def fit(
    model,
    train,
    validation,
    params: TrainingParams,
    class_weight: dict[int, float] | None,
    shuffle_seed: int = 0,
    strategy=None,
    start: float | None = None,
    scorer=None,
) -> list[dict[str, Any]]:
    """Train with early stopping on validation loss that restores the best epoch's weights.

    Args:
        model: a compiled model.
        train: a ``tf.data`` dataset of (inputs, one-hot), or an (inputs, one-hot) tuple of arrays.
        validation: the same for validation, or None to monitor the training loss.
        params: epochs, batch size (for arrays) and patience.
        class_weight: per-class loss weights, or None.
        shuffle_seed: the seed arrays are reshuffled with every epoch (a dataset shuffles itself).
        strategy: the ``tf.distribute`` strategy the model was built under, if any. Keras' ``fit`` cannot run
            under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585); across hosts, :func:`fit_across_hosts`
            trains instead, to the same rules.
        start: the monitored loss of the model before its first step (epoch 0), or None. Given, epoch 0 competes
            with the trained epochs: when none beats it, the model leaves exactly as it came.
        scorer: a compiled model sharing ``model``'s weights that scores validation in its place, or None. Fine-
            tuning trains the single view of a mirror-averaging classifier and scores the classifier itself.

    Returns:
        One row per epoch run, with the columns of :data:`HISTORY_COLUMNS` (epoch counts from 1).
    """
    import tensorflow as tf

    if isinstance(train, tuple):
        train = array_dataset(train, params.batch_size, shuffle_seed)
    if isinstance(validation, tuple):
        validation = array_dataset(validation, params.batch_size)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return fit_across_hosts(model, train, validation, params, class_weight, strategy, start, scorer)
    monitor = "val_loss" if validation is not None else "loss"
    callbacks = [KeepBest(model, params.patience, start).callback(monitor)]
    if scorer is not None and validation is not None:
        # Before early stopping, and before Keras' own History and progress bar, which read the same logs.
        callbacks.insert(0, _validation_by(scorer, validation, params.batch_size))
    history = model.fit(
        train, epochs=params.epochs, validation_data=validation if scorer is None else None,
        class_weight=class_weight, callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself
        verbose=2,
    ).history
    rows = []
    for epoch in range(len(history["loss"])):
        row = {column: history[column][epoch] if column in history else None for column in HISTORY_COLUMNS}
        rows.append({**row, "epoch": epoch + 1})
    return rows


def _validation_by(scorer, validation, batch_size: int):
    """A Keras callback that scores ``validation`` with ``scorer`` after each epoch, as the epoch's
    ``val_loss`` and ``val_accuracy``."""
    import keras

    class Callback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            result = score(scorer, validation, batch_size)
            if logs is not None:
                logs.update({"val_loss": result["loss"], "val_accuracy": result["accuracy"]})

    return Callback()


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per-epoch history as CSV with an ``epoch`` column (header only when no epoch ran)."""
    write_csv(path, HISTORY_COLUMNS, ([row[column] for column in HISTORY_COLUMNS] for row in rows))


def blend_weights(variables, start: list[np.ndarray], blend: float) -> None:
    """Move trained variables back toward where they started: each becomes ``start + blend * (now - start)``.

    ``blend`` 1 keeps the trained values, 0 restores the start; between, a point on the straight line between two
    models that share one starting point (weight-space interpolation). Arrays that did not change, and those
    that are not floating point, are left as they are.
    """
    if len(variables) != len(start):
        raise ValueError(f"{len(variables)} variables against {len(start)} starting values")
    for variable, before in zip(variables, start, strict=True):
        now = np.asarray(variable.numpy())
        if now.shape != before.shape:
            raise ValueError(f"{variable.path}: shape {now.shape} against the start's {before.shape}")
        if np.issubdtype(now.dtype, np.floating) and not np.array_equal(now, before):
            variable.assign((before + blend * (now - before)).astype(now.dtype))
