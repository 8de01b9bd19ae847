"""The classifier head that sits on the pooled backbone features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from transfer.schema import HeadParams

HEAD_LAYER = "head"

# What head.search draws from, around the settings in params.yaml: the learning rate within a factor of about 5.6
# (10 ** 0.75) either way, and each of these.
SEARCH_LR_SPAN = 0.75
SEARCH_DROPOUTS = (0.0, 0.2, 0.35, 0.5, 0.65)
SEARCH_HIDDEN = ((), (128,), (256,), (512,))
SEARCH_LABEL_SMOOTHING = (0.0, 0.1)
SEARCH_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)


def build_head(feature_dim: int, num_classes: int, hidden: Sequence[int], dropout: float, batchnorm: bool):
    """A small dense classifier on bottleneck features.

    Layout: [BatchNorm] -> (Dense(width, relu) -> Dropout) per hidden width -> Dropout if there is no hidden
    layer -> Dense(num_classes, softmax). The heads of the workflows this grew from, as params:
    ``hidden: [128], dropout: 0.5``; ``batchnorm: true, hidden: [], dropout: 0.2``;
    ``batchnorm: true, hidden: [400, 256, 256], dropout: 0.2``.

    Args:
        feature_dim: width of the feature vector.
        num_classes: number of output classes.
        hidden: widths of the hidden Dense layers, possibly empty.
        dropout: dropout rate after each hidden layer (or on the features when there is none).
        batchnorm: normalise the features first.

    Returns:
        A ``keras.Model`` named :data:`HEAD_LAYER` from features to class probabilities.
    """
    import keras

    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    if batchnorm:
        x = keras.layers.BatchNormalization(name="head_batchnorm")(x)
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(width, activation="relu", name=f"head_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
    if not hidden and dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 whatever the global policy: under mixed precision, softmax and the loss stay in full precision.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=HEAD_LAYER)


def search_settings(base: HeadParams, trials: int, seed: int) -> list[HeadParams]:
    """The head settings ``head.search`` tries: ``base`` (the params as written) first, then draws around it.

    Each draw sets the learning rate (log-uniform within :data:`SEARCH_LR_SPAN` decades of ``base``'s), the
    dropout, the hidden layer (none, or one of a few widths), the label smoothing and the weight decay (with
    AdamW when it is above 0). The draws depend on ``seed`` alone: the same params try the same settings.

    Args:
        base: the head params as read; its batch norm, epochs, patience and schedule are kept in every draw.
        trials: how many settings, ``base`` included (0 or 1: ``base`` only).
        seed: the run's seed.
    """
    rng = np.random.default_rng([seed, 0x4EAD])
    settings = [base]
    while len(settings) < trials:
        decay = SEARCH_WEIGHT_DECAYS[rng.integers(len(SEARCH_WEIGHT_DECAYS))]
        training = replace(
            base.training,
            lr=float(f"{base.training.lr * 10 ** rng.uniform(-SEARCH_LR_SPAN, SEARCH_LR_SPAN):.3g}"),
            label_smoothing=SEARCH_LABEL_SMOOTHING[rng.integers(len(SEARCH_LABEL_SMOOTHING))],
            weight_decay=decay,
            optimizer="adamw" if decay else base.training.optimizer,
        )
        drawn = replace(base, hidden=SEARCH_HIDDEN[rng.integers(len(SEARCH_HIDDEN))],
                        dropout=SEARCH_DROPOUTS[rng.integers(len(SEARCH_DROPOUTS))], training=training)
        if drawn not in settings:
            settings.append(drawn)
    return settings


def setting_row(setting: HeadParams) -> dict[str, object]:
    """What a search trial varies, as one row of ``reports/head/search.csv``."""
    return {
        "lr": setting.training.lr,
        "dropout": setting.dropout,
        "hidden": " ".join(str(width) for width in setting.hidden),
        "label_smoothing": setting.training.label_smoothing,
        "weight_decay": setting.training.weight_decay if setting.training.optimizer == "adamw" else 0.0,
        "optimizer": setting.training.optimizer,
    }
