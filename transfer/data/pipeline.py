"""``tf.data`` input: images decoded upright and resized, arrays in batches, the random augmentation layers,
and the prefetching every stage's input goes through.
"""

from __future__ import annotations

import os

import numpy as np

from transfer.data.images import exif_orientation, exif_orientations
from transfer.schema import AugmentParams

# Every EXIF orientation is a transpose or not, then a reversal of none, one or both axes (Pillow's
# exif_transpose: 2 mirrors, 3 turns 180 degrees, 4 flips, 5 transposes, 6 turns 90 clockwise, 7 transverses,
# 8 turns 90 counter-clockwise). Row k is orientation k; row 0 stands for an unknown value, left as stored.
_TRANSPOSE = [False, False, False, False, False, True, True, True, True]
_REVERSE = [(False, False), (False, False), (False, True), (True, True), (True, False),
            (False, False), (False, True), (True, True), (True, False)]


def orient(image, orientation):
    """Decoded pixels [height, width, channels] turned as EXIF orientation ``orientation`` (1-8) says, as
    ``PIL.ImageOps.exif_transpose`` turns them. Table lookups and two ops, no control flow: inside ``tf.data``
    a ``tf.switch_case`` cost more than decoding the photo."""
    import tensorflow as tf

    index = tf.clip_by_value(tf.cast(orientation, tf.int32), 0, 8)
    perm = tf.gather(tf.constant([[1, 0, 2] if flag else [0, 1, 2] for flag in _TRANSPOSE]), index)
    dims = tf.gather(tf.constant([[rows, columns, False] for rows, columns in _REVERSE]), index)
    return tf.raw_ops.Reverse(tensor=tf.transpose(image, perm), dims=dims)


def load_image(path, image_size: tuple[int, int], orientation=None):
    """Read, decode (JPEG, PNG, GIF or BMP, whatever the extension), turn upright and resize one image to
    float32 RGB. ``orientation``: its EXIF orientation; None reads it from the file (``path`` a str)."""
    import tensorflow as tf

    if orientation is None:
        orientation = exif_orientation(path)
    return decode_resized(tf.io.read_file(path), image_size, orientation)


def decode_upright(data, orientation=1):
    """Encoded image bytes (JPEG, PNG, GIF or BMP) decoded to float32 RGB [height, width, 3], turned upright
    by their EXIF ``orientation`` (:func:`exif_orientation`; a Python 1 skips the turn)."""
    import tensorflow as tf

    # float32 before turning, as resizing gives anyway: oneDNN's uint8 kernels log an error line on some CPUs.
    image = tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32)
    image.set_shape([None, None, 3])
    if not (isinstance(orientation, int) and orientation == 1):
        image = orient(image, orientation)
        image.set_shape([None, None, 3])
    return image


def decode_resized(data, image_size: tuple[int, int], orientation=1):
    """Decode encoded image bytes upright (:func:`decode_upright`) and resize them, as every path (training,
    evaluation, predict, the served photo model) does."""
    import tensorflow as tf

    # Same op and method as the model's own Resizing layer, so training and serving see the same pixels.
    return tf.image.resize(decode_upright(data, orientation), image_size, method="bilinear")


def image_dataset(
    paths: list[str],
    image_size: tuple[int, int],
    batch_size: int,
    labels: np.ndarray | None = None,
    num_classes: int | None = None,
    shuffle_seed: int | None = None,
):
    """A batched, prefetched ``tf.data`` pipeline over image files, decoded in parallel, in a fixed order.

    Args:
        paths: image files.
        image_size: (height, width) to resize to.
        batch_size: images per batch.
        labels: integer labels to pair with the images, one-hot encoded to ``num_classes``; None for images only.
        num_classes: the number of classes, needed with ``labels``.
        shuffle_seed: shuffle every epoch with this seed; None keeps the file order (for features and scoring).
    """
    import tensorflow as tf

    # Each file's EXIF orientation, read once here from its header, travels with its path; when every photo
    # stands as stored (most sets), none is turned.
    orientations = np.asarray(exif_orientations(paths), np.int32)
    turn = bool((orientations != 1).any())
    dataset = tf.data.Dataset.from_tensor_slices((paths, orientations))
    if labels is not None:
        one_hot = tf.one_hot(labels, num_classes)
        dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensor_slices(one_hot)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    workers = cpu_count()
    if labels is None:
        dataset = dataset.map(lambda p, o: load_image(p, image_size, o if turn else 1), num_parallel_calls=workers)
    else:
        dataset = dataset.map(lambda file, y: (load_image(file[0], image_size, file[1] if turn else 1), y),
                              num_parallel_calls=workers)
    return steady(dataset.batch(batch_size))


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, which containers and schedulers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def steady(dataset):
    """``dataset`` prefetching two batches, with tf.data's autotuning off.

    Decoding on every CPU already keeps a backbone fed (measured: the consumer waits under 3% of the time).
    What autotuning adds is a cost at the end: destroying an autotuned iterator sometimes blocks for up to
    0.7 s, and extraction ends one per split, training one per epoch.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


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
    # The pipeline augments raw pixels, before the model's own preprocessing: values in [0, 255].
    if augment.contrast:
        layers.append(keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed + 3))
    if augment.brightness:
        layers.append(keras.layers.RandomBrightness(augment.brightness, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augment") if layers else None

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
