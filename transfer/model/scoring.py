"""A model's loss and accuracy: on probabilities, on a ``tf.data`` dataset under any strategy, and on in-memory
features with one yardstick for models trained with different label smoothing.
"""

from __future__ import annotations

import numpy as np

from transfer.data.pipeline import array_dataset
from transfer.model.across_hosts import AcrossHosts

PROBABILITY_EPSILON = 1e-7  # Keras' epsilon: a probability of 0 costs -log(1e-7), not infinity.


def probability_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Cross-entropy (no label smoothing) and accuracy of [N, C] probabilities against [N] class indices."""
    true_probability = np.clip(probabilities[np.arange(len(labels)), labels], PROBABILITY_EPSILON, 1.0)
    return {"loss": float(np.mean(-np.log(true_probability))),
            "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels))}

def score(model, data, batch_size: int, strategy=None) -> dict[str, float]:
    """The loss and accuracy of a compiled model on a ``tf.data`` dataset or (inputs, one-hot) arrays."""
    import tensorflow as tf

    if isinstance(data, tuple):
        data = array_dataset(data, batch_size)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        loop = AcrossHosts(model, strategy)
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
