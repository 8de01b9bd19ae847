"""When training stops and what it keeps: :class:`KeepBest` (early stopping that can keep the starting
weights), the epoch a history kept, and the note when training ran into its epoch cap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transfer.schema import TrainingParams


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
