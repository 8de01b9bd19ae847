"""The classifier head that sits on the pooled backbone features."""

from __future__ import annotations

from collections.abc import Sequence

HEAD_LAYER = "head"


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
