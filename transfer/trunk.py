"""Fine-tuning epochs that cost only the unfrozen layers (``fine_tune.trunk_cache``).

Below the unfreeze boundary the backbone is frozen, and when the images come with no random augmentation
but mirroring, it sees the same inputs every epoch. :func:`split_backbone` cuts the backbone where one
tensor separates the frozen trunk from the trained top; the stage runs the trunk once on every image and on
its mirror, and trains the top from those cached tensors. The top is rebuilt on the backbone's own layer
objects, so training it trains the full model, which is what gets scored and saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer.errors import ParamError

# The most the cached trunk outputs may hold in memory, all splits and both views together.
MAX_CACHE_BYTES = 6 * 1024**3


@dataclass
class Split:
    """A backbone cut in two.

    Attributes:
        trunk: backbone input to the boundary tensor (frozen).
        top: the boundary tensor to the backbone's output, on the backbone's own layers.
        first: the name of the top's first layer (at or below the first unfrozen layer: the cut moves down to
            the nearest point that a single tensor crosses, e.g. below a residual block).
    """

    trunk: object
    top: object
    first: str


def _crossing(operations: list, start: int) -> dict[int, object]:
    """The tensors made before ``operations[start]`` and used from it on, by id."""
    inside = {id(operation) for operation in operations[start:]}
    crossing = {}
    for operation in operations[start:]:
        for tensor in operation._inbound_nodes[0].input_tensors:
            if id(tensor._keras_history.operation) not in inside:
                crossing[id(tensor)] = tensor
    return crossing


def split_backbone(backbone, first_trained: str) -> Split:
    """Cut ``backbone`` (a functional ``keras.Model``) at or below its layer ``first_trained``."""
    import keras
    from keras import tree

    operations = [operation for operation in backbone.operations if not isinstance(operation, keras.layers.InputLayer)]
    names = [operation.name for operation in operations]
    start = names.index(first_trained)
    crossing = _crossing(operations, start)
    while len(crossing) != 1:
        start -= 1
        crossing = _crossing(operations, start)
    boundary = next(iter(crossing.values()))
    trunk = keras.Model(backbone.input, boundary, name="trunk")
    inputs = keras.Input(boundary.shape[1:], dtype=boundary.dtype, name="trunk_output")
    tensors = {id(boundary): inputs}
    for operation in operations[start:]:
        node = operation._inbound_nodes[0]
        args, kwargs = node.arguments.fill_in(tensors)
        for symbolic, value in zip(node.outputs, tree.flatten(operation(*args, **kwargs)), strict=True):
            tensors[id(symbolic)] = value
    top = keras.Model(inputs, tensors[id(backbone.output)], name="top")
    return Split(trunk=trunk, top=top, first=names[start])


def trunk_on_images(split: Split, single_view, preprocessing: str):
    """Raw images in, the trunk's output out: ``single_view``'s own resizing, the backbone's preprocessing, the
    trunk. What :func:`run_trunk` runs to fill the cache."""
    import keras

    from transfer.backbones import preprocess

    inputs = keras.Input((None, None, 3), name="image")
    resized = single_view.get_layer("resize")(inputs)
    return keras.Model(inputs, split.trunk(preprocess(resized, preprocessing), training=False),
                       name="trunk_on_images")


def check_cache_size(images: int, shape: tuple[int, ...], itemsize: int) -> int:
    """The bytes the cache of ``images`` images (two views each) will take.

    Raises:
        ParamError: more than :data:`MAX_CACHE_BYTES`.
    """
    size = 2 * images * int(np.prod(shape)) * itemsize
    if size > MAX_CACHE_BYTES:
        raise ParamError(
            f"fine_tune.trunk_cache = true is invalid here: the trunk's output for {images} images, given and "
            f"mirrored ({list(shape)} each), would take {size / 1024**3:.1f} GiB, over "
            f"{MAX_CACHE_BYTES / 1024**3:.0f}; unfreeze fewer layers, or set fine_tune.trunk_cache to false"
        )
    return size


def classifiers(split: Split, head, mirror: bool):
    """(trained, scorer): the top plus head on one cached view, and the scorer that validates the full model
    from the cache: both views averaged when ``mirror`` (the saved model's own mirror averaging), else one."""
    import keras

    from transfer.backbones import MIRROR_LAYER

    shape, dtype = split.top.input.shape[1:], split.top.input.dtype
    view = keras.Input(shape, dtype=dtype, name="trunk_output")
    trained = keras.Model(view, head(split.top(view, training=False)), name="top_classifier")
    if not mirror:
        return trained, trained
    given, mirrored = keras.Input(shape, dtype=dtype, name="given"), keras.Input(shape, dtype=dtype, name="mirrored")
    averaged = keras.layers.Average(name=MIRROR_LAYER)([split.top(given, training=False),
                                                        split.top(mirrored, training=False)])
    return trained, keras.Model([given, mirrored], head(averaged), name="top_scorer")


def run_trunk(trunk_on_images, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The trunk's output for each image of ``dataset`` (batches of images, in order) and for its mirror.

    Both views go through one traced call as one batch, and the last, smaller batch is padded to the full
    size, so the trunk is traced once (as extraction does, see :func:`transfer.features.compiled_forward`).
    """
    import tensorflow as tf

    forward = tf.function(lambda images: trunk_on_images(tf.concat([images, tf.reverse(images, axis=[2])], 0),
                                                         training=False), reduce_retracing=True)
    given, mirrored, full = [], [], None
    for images in dataset:
        count = int(images.shape[0])
        full = full or count
        if count < full:
            images = tf.concat([images, tf.zeros([full - count, *images.shape[1:]], images.dtype)], axis=0)
        both = forward(images).numpy()  # the batch as given (padded), then its mirror
        size = int(images.shape[0])
        given.append(both[:count])
        mirrored.append(both[size:size + count])
    return np.concatenate(given), np.concatenate(mirrored)


def view_dataset(given: np.ndarray, mirrored: np.ndarray, targets: np.ndarray, batch_size: int, seed: int,
                 flip: bool):
    """Training batches from the cache: each epoch reshuffled, and each image as given or mirrored at random
    (seeded) when ``flip``: the random horizontal flip, applied before the trunk instead of inside the epoch."""
    import tensorflow as tf

    from transfer.datasets import steady

    dataset = tf.data.Dataset.from_tensor_slices((given, mirrored, targets))
    dataset = dataset.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    if flip:
        coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, coins).map(
            lambda views, coin: (tf.where(coin % 2 == 0, views[0], views[1]), views[2]))
    else:
        dataset = dataset.map(lambda a, b, y: (a, y))
    return steady(dataset.batch(batch_size))
