"""The training loop for ``strategy: multi_worker``, where Keras' own ``fit`` and ``evaluate`` cannot run:
the same rules as Keras, with :class:`~transfer.model.stopping.KeepBest` for early stopping.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from transfer.model.stopping import KeepBest
from transfer.schema import TrainingParams

log = logging.getLogger(__name__)


class AcrossHosts:
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
    loop = AcrossHosts(model, strategy, class_weight)
    scoring = loop if scorer is None else AcrossHosts(scorer, strategy)
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
