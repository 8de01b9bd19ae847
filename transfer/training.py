"""Fitting a model: seeds, class weights, augmentation, early stopping, and the history it leaves."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from transfer.datasets import steady
from transfer.io import write_csv
from transfer.params import TrainingParams
from transfer.reports import probability_scores

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


def array_dataset(arrays: tuple[np.ndarray, np.ndarray], batch_size: int, shuffle_seed: int | None = None):
    """In-memory (inputs, one-hot) arrays as a batched, prefetched ``tf.data`` pipeline.

    Keras' own handling of NumPy arrays rebuilds its input pipeline every epoch; on cached features that
    costs three times the training itself (0.040 s against 0.013 s an epoch for 350 flowers).

    Args:
        arrays: (inputs, one-hot targets).
        batch_size: rows per step.
        shuffle_seed: reshuffle every epoch with this seed; None keeps the order (for validation).
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(arrays[0]), seed=shuffle_seed, reshuffle_each_iteration=True)
    return steady(dataset.batch(batch_size))


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


class KeepBest:
    """Early stopping on a loss (lower is better) that restores the best weights, the starting ones included.

    Keras' ``EarlyStopping`` only knows the epochs it saw, so a fine-tune whose every epoch is worse than the
    head it started from would keep its least bad epoch; this keeps the starting weights then. Patience counts
    as Keras does, over the trained epochs only: stop after ``patience`` epochs in a row without a strict
    improvement on the best trained epoch. A good start decides what is kept, never when training stops, so
    training that is still improving goes on even while it is behind epoch 0 (a model trained from scratch
    behind the head on its random features; a fine-tune recovering from its first steps).
    :func:`fit` runs it as a Keras callback (:meth:`callback`), :func:`fit_across_hosts` calls it from its own
    loop.

    Args:
        model: the model being trained.
        patience: epochs in a row without a lower loss before stopping.
        start: the loss of the model before its first step (epoch 0), or None.
    """

    def __init__(self, model, patience: int, start: float | None = None):
        self.model, self.patience = model, patience
        self.best = np.inf if start is None else start  # the loss of the weights kept so far, epoch 0 included
        self.best_weights = None if start is None else model.get_weights()
        self.best_trained = np.inf  # the lowest loss of a trained epoch: what patience counts against
        self.wait = 0

    def update(self, current: float) -> bool:
        """Record one epoch's loss; True when training should stop."""
        if current < self.best:
            self.best, self.best_weights = current, self.model.get_weights()
        if current < self.best_trained:
            self.best_trained, self.wait = current, 0
            return False
        self.wait += 1
        return self.wait >= self.patience

    def restore(self) -> None:
        """Put the best weights seen back into the model."""
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def callback(self, monitor: str):
        """This rule as a Keras callback on the logged ``monitor``."""
        import keras

        rule = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                current = (logs or {}).get(monitor)
                if current is not None and rule.update(current):
                    self.model.stop_training = True

            def on_train_end(self, logs=None):
                rule.restore()

        return Callback()


class _AcrossHosts:
    """Training and scoring steps for a model built under ``MultiWorkerMirroredStrategy``, where Keras' own
    ``fit`` and ``evaluate`` cannot run (keras-team/keras#20585).

    The same rules as Keras: the compiled optimizer and label smoothing, class weights on the training loss
    only, and the loss and accuracy of an epoch averaged over its examples.
    """

    def __init__(self, model, strategy, class_weight: dict[int, float] | None = None):
        import tensorflow as tf

        self.model, self.strategy = model, strategy
        self.smoothing = float(getattr(model.loss, "label_smoothing", 0.0))
        self.table = None
        if class_weight:
            classes = int(model.output_shape[-1])
            self.table = tf.constant([class_weight.get(i, 1.0) for i in range(classes)], tf.float32)
        self.train_step = self._step(self._train_replica)
        self.score_step = self._step(self._score_replica)

    def _sums(self, targets, probabilities, weighted: bool):
        import keras
        import tensorflow as tf

        losses = keras.losses.categorical_crossentropy(targets, probabilities, label_smoothing=self.smoothing)
        if weighted and self.table is not None:
            losses = losses * tf.gather(self.table, tf.argmax(targets, axis=1))
        hits = tf.cast(tf.argmax(probabilities, axis=1) == tf.argmax(targets, axis=1), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(hits), tf.cast(tf.shape(targets)[0], tf.float32)

    def _train_replica(self, inputs, targets):
        import tensorflow as tf

        # The mean over the global batch, however unevenly the last batch is split over the replicas.
        count = tf.distribute.get_replica_context().all_reduce("SUM", tf.cast(tf.shape(targets)[0], tf.float32))
        with tf.GradientTape() as tape:
            probabilities = self.model(inputs, training=True)
            loss_sum, hits, seen = self._sums(targets, probabilities, weighted=True)
            loss = loss_sum / tf.maximum(count, 1.0)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.model.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        return loss_sum, hits, seen

    def _score_replica(self, inputs, targets):
        return self._sums(targets, self.model(inputs, training=False), weighted=False)

    def _step(self, replica_fn):
        import tensorflow as tf

        @tf.function
        def run(batch):
            sums = self.strategy.run(replica_fn, args=batch)
            return [self.strategy.reduce("SUM", value, axis=None) for value in sums]

        return run

    def epoch(self, step, dataset) -> tuple[float, float]:
        """(mean loss, accuracy) of one pass of ``step`` over ``dataset``."""
        totals = np.zeros(3)
        for batch in self.strategy.experimental_distribute_dataset(dataset):
            totals += [float(value) for value in step(batch)]
        return totals[0] / max(totals[2], 1.0), totals[1] / max(totals[2], 1.0)


def fit_across_hosts(
    model, train, validation, params: TrainingParams, class_weight: dict[int, float] | None, strategy,
    start: float | None = None, scorer=None,
) -> list[dict[str, Any]]:
    """:func:`fit` for a model built under ``MultiWorkerMirroredStrategy``: a training loop of its own.

    Early stopping as :func:`fit`'s callback: on ``val_loss`` (or ``loss``) with ``patience``, and the best
    epoch's weights restored at the end. Every worker takes part in every step and ends with the same weights.
    """
    if not model.optimizer.built:
        # Its slots made here, once, as mirrored variables: not lazily inside a replica's first step.
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    loop = _AcrossHosts(model, strategy, class_weight)
    scoring = loop if scorer is None else _AcrossHosts(scorer, strategy)
    rows: list[dict[str, Any]] = []
    keep = KeepBest(model, params.patience, start)
    for number in range(1, params.epochs + 1):
        loss, accuracy = loop.epoch(loop.train_step, train)
        row = {"epoch": number, "loss": loss, "accuracy": accuracy, "val_loss": None, "val_accuracy": None}
        if validation is not None:
            row["val_loss"], row["val_accuracy"] = scoring.epoch(scoring.score_step, validation)
        rows.append(row)
        log.info("epoch %d/%d: %s", number, params.epochs,
                 ", ".join(f"{key} {value:.4f}" for key, value in row.items() if key != "epoch" and value is not None))
        if keep.update(row["val_loss" if validation is not None else "loss"]):
            break
    keep.restore()
    return rows


def score(model, data, batch_size: int, strategy=None) -> dict[str, float]:
    """The loss and accuracy of a compiled model on a ``tf.data`` dataset or (inputs, one-hot) arrays."""
    import tensorflow as tf

    if isinstance(data, tuple):
        data = array_dataset(data, batch_size)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        loop = _AcrossHosts(model, strategy)
        loss, accuracy = loop.epoch(loop.score_step, data)
        return {"loss": loss, "accuracy": accuracy}
    scored = model.evaluate(data, verbose=0, return_dict=True)
    return {"loss": float(scored["loss"]), "accuracy": float(scored["accuracy"])}


def plain_scores(model, features: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> dict[str, float]:
    """Cross-entropy (without label smoothing) and accuracy of a model on in-memory features and integer labels:
    one yardstick for models trained with different label smoothing (the head search's trials)."""
    probabilities = np.concatenate([np.asarray(model(features[start:start + batch_size], training=False))
                                    for start in range(0, len(features), batch_size)])
    return probability_scores(labels, probabilities)


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


def best_epoch(rows: list[dict[str, Any]]) -> int:
    """The epoch whose weights early stopping kept: 0 for the starting weights (or when no epoch ran).

    The first of equal losses wins, as in :func:`fit`, where a later epoch must be strictly better.
    """
    if not rows:
        return 0
    key = "val_loss" if rows[0]["val_loss"] is not None else "loss"
    return min(rows, key=lambda row: row[key])["epoch"]


def cap_note(rows: list[dict[str, Any]], params: TrainingParams, section: str) -> str | None:
    """A line for the log when training ran into its epoch cap still improving, else None.

    Still improving: the best trained epoch lies within the last ``patience`` epochs, so early stopping had not
    ended it and more epochs might have found a lower loss.
    """
    trained = [row for row in rows if row["epoch"] > 0]
    if not trained or len(trained) < params.epochs:
        return None
    key = "val_loss" if trained[0]["val_loss"] is not None else "loss"
    lowest = min(trained, key=lambda row: row[key])["epoch"]
    if params.epochs - lowest >= max(params.patience, 1):
        return None
    return (f"training stopped at its cap of {params.epochs} epochs still improving ({key} lowest at epoch "
            f"{lowest}, within the last {section}.patience = {params.patience}): a higher {section}.epochs may "
            "find a better model")
