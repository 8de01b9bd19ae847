"""The bottleneck cache: the frozen backbone runs once per dataset, and head experiments reuse its output.

Layout of a feature folder (``data/features/``):
    <split>_features.npy   [N, D] features, float16 by default
    <split>_labels.npy     [N] int32 class indices
    train_views_*.npy      with features.train_views = K: K augmented copies of each training image, K x N rows
    meta.json              backbone, weights, image size, feature dim, dtype, class names, counts
    trunk/                 the frozen trunk's output at the fine-tune boundary, for fine-tune (transfer.model.trunk)
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from transfer.data.pipeline import augmenter, image_dataset
from transfer.errors import DataError, ParamError
from transfer.io import atomic_path, read_json, write_json
from transfer.model.rows import RowFile

log = logging.getLogger(__name__)

META_FILE = "meta.json"


class FeatureStore:
    """Read access to a feature folder written by :func:`extract_features`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / META_FILE).is_file():
            raise DataError(f"{self.folder} holds no extracted features; run the extract-features stage first")
        self.meta: dict[str, Any] = read_json(self.folder / META_FILE)

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The features (memory-mapped, read-only) and labels of one split."""
        features = np.load(self.folder / f"{split}_features.npy", mmap_mode="r")
        labels = np.load(self.folder / f"{split}_labels.npy")
        return features, labels


# The split of augmented copies of the training images (``features.train_views``), when there are any.
TRAIN_VIEWS = "train_views"


def changing_extractor(extractor, augment, seed: int, key: str = "features.train_views"):
    """``extractor`` behind ``augment``'s random changes, which run even when the model is called for inference
    (as extraction calls it): a new draw on every call, seeded. ``key`` is the param that asked for copies."""
    import keras

    changes = augmenter(augment, seed)
    if changes is None:
        raise ParamError(f"{key} needs at least one random change in features.view_augment "
                         f"(copies of an image left as it is add nothing); set one, or {key}: 0")
    class AlwaysChange(keras.layers.Layer):
        """The changes in training mode whatever the caller says: a call's ``training=False`` reaches every
        layer of a functional model, overriding the mode a layer was wired with. Never saved."""

        def call(self, images, training=None):
            return changes(images, training=True)

    inputs = keras.Input((None, None, 3), name="image")
    return keras.Model(inputs, extractor(AlwaysChange(name="always_change")(inputs)), name="changing_extractor")


def compiled_forward(extractor, image_size: tuple[int, int]):
    """The extractor as one traced graph for every batch size, the last, smaller batch included.

    Without a signature, the last batch of each split has a new shape and pays a second trace, which on a
    few hundred images costs as much as the forward passes themselves.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *image_size, 3], tf.float32)]
    return tf.function(lambda images: extractor(images, training=False), input_signature=signature)


def padded(batch, size: int):
    """``batch`` with zero images added up to ``size`` rows (the caller drops their outputs): one shape for every
    call of a compiled forward pass, the last, smaller batch included."""
    import tensorflow as tf

    count = int(batch.shape[0])
    if count >= size:
        return batch
    return tf.concat([batch, tf.zeros([size - count, *batch.shape[1:]], batch.dtype)], axis=0)


def _local_batches(forward, paths: list[str], image_size: tuple[int, int], batch_size: int):
    """(positions, features) per batch of ``forward`` (see :func:`compiled_forward`) on one device, in file order.

    A split's last, smaller batch is padded to the full size and the padding's rows dropped: every call then
    has one shape, and the CPU kernels (oneDNN) prepared for it on the first call serve all of them. A new
    shape costs a new preparation, longer than the padding's few images on costlier backbones.
    """
    position = 0
    for batch in image_dataset(paths, image_size, batch_size):
        count = int(batch.shape[0])
        batch = padded(batch, batch_size)
        yield np.arange(position, position + count), tuple(output.numpy()[:count] for output in _listed(forward(batch)))
        position += count


def _listed(outputs) -> list:
    """A model's outputs as a list, whether it has one or several."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def distributed_forward(extractor, strategy):
    """One traced step that runs each replica's share of a global batch and gathers (positions, features).

    Every image travels with its position in the split, and every replica's results are gathered onto each
    worker, so the order in which the strategy shards the data (across hosts it interleaves them) cannot
    misplace a feature row.
    """
    import tensorflow as tf

    @tf.function
    def step(positions, images):
        local = strategy.run(lambda p, x: (p, _listed(extractor(x, training=False))), args=(positions, images))
        return strategy.gather(local[0], axis=0), [strategy.gather(output, axis=0) for output in local[1]]

    return step


def _distributed_batches(step, paths: list[str], image_size: tuple[int, int], batch_size: int, strategy):
    """(positions, features) per global batch of ``step`` (see :func:`distributed_forward`)."""
    import tensorflow as tf

    positions = tf.data.Dataset.range(len(paths)).batch(batch_size)
    dataset = tf.data.Dataset.zip((positions, image_dataset(paths, image_size, batch_size)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    for positions_batch, images in strategy.experimental_distribute_dataset(dataset.with_options(options)):
        where, outputs = step(positions_batch, images)
        yield where.numpy(), tuple(output.numpy() for output in outputs)


def _write_split(batches, targets: list[tuple[RowFile, int]], count: int, progress) -> None:
    """Write ``count`` rows of each output, arriving as (positions, outputs) batches, into files on disk.

    Args:
        batches: (positions, one array per output) per batch.
        targets: per output, the file and the row that position 0 goes to (outputs may share a file: a cache
            of several views of each image).

    Raises:
        RuntimeError: a row was never written or written twice (a distribution bug; nothing is kept).
    """
    written = np.zeros(count, dtype=np.int32)
    for positions, outputs in batches:
        for (target, offset), rows in zip(targets, outputs, strict=True):
            target.write(positions + offset, rows)
        np.add.at(written, positions, 1)
        progress.update(len(positions))
    if not (written == 1).all():
        raise RuntimeError(f"{targets[0][0].path.name}: {int((written == 0).sum())} rows missing and "
                           f"{int((written > 1).sum())} written twice; the features are not kept")


def _array_file(path: Path, shape: tuple[int, ...], dtype: str) -> RowFile | None:
    """A new row file, or None for one of no rows (written whole here: there is nothing to stream)."""
    if not shape[0]:
        np.save(path, np.zeros(shape, dtype=dtype))
        return None
    return RowFile.create(path, shape, dtype)


def extract_features(
    extractor,
    image_size: tuple[int, int],
    splits: dict[str, tuple[list[str], np.ndarray]],
    target: Path,
    batch_size: int,
    dtype: str,
    meta: dict[str, Any],
    runtime=None,
    views: tuple[Any, int] | None = None,
    trunk: Any = None,
) -> dict[str, float]:
    """Run the frozen extractor once over every split and write the feature folder, whole or not at all.

    Args:
        extractor: a model from raw images to features (see ``backbones.build_feature_extractor``).
        image_size: (height, width) the images are resized to before batching, the extractor's own size.
        splits: {split: (image paths, integer labels)}.
        target: the feature folder to write.
        batch_size: images per forward pass.
        dtype: the stored feature dtype, ``float16`` or ``float32``.
        meta: facts to record in ``meta.json`` (backbone, weights, image size, classes).
        runtime: the :class:`transfer.model.distribute.Runtime` to run under; None: one device. Across hosts,
            each computes its share and every host writes all of the features.
        views: (an extractor that changes each image at random first, K): K copies of the training split
            through it, written as the split ``train_views`` (K x N rows: the first copy of every image, then
            the second...). None or K = 0: none.
        trunk: a :class:`transfer.model.trunk.TrunkPlan`, or None: the frozen trunk's output for every training and
            validation image, its mirror and (training only) its augmented copies, written under ``trunk/`` in
            the same pass that makes those splits' features (see :mod:`transfer.model.trunk` for the layout).

    Returns:
        {"images": count, "seconds": wall time, "trace_seconds": the part of it spent tracing the forward pass
        and preparing its kernels,
        "images_per_second": throughput of the streaming (decode, resize, preprocess, forward, write)}.
    """
    from tqdm import tqdm

    dim = int(extractor.output_shape[-1])
    copies = views[1] if views else 0
    train_paths, train_labels = splits.get("train", ([], np.zeros(0)))
    total = (sum(len(paths) for paths, _ in splits.values()) + copies * len(train_paths)
             + (trunk.copies * len(train_paths) if trunk else 0))
    start = time.perf_counter()
    distributed = runtime is not None and runtime.distributed

    def batcher(model):
        """(paths -> batches of (positions, features)) through ``model``, traced once up front."""
        if distributed:
            step = distributed_forward(model, runtime.strategy)
            return lambda paths: _distributed_batches(step, paths, image_size, batch_size, runtime.strategy)
        # Traced and its kernels prepared once up front, on the one batch shape it will see, so that the
        # throughput below is the per-image work alone (the set-up is reported apart).
        forward = compiled_forward(model, image_size)
        forward(np.zeros((batch_size, *image_size, 3), dtype=np.float32))
        return lambda paths: _local_batches(forward, paths, image_size, batch_size)

    batches = batcher(extractor)
    changed = batcher(views[0]) if copies else None
    joint = batcher(trunk.joint) if trunk else None
    trunk_changed = batcher(trunk.views) if trunk and trunk.copies else None
    streaming = time.perf_counter()
    counts = {split: len(paths) for split, (paths, _) in splits.items()}
    with (atomic_path(target) as staging, contextlib.ExitStack() as files,
          tqdm(total=total, unit="img", desc="extract-features") as progress):
        staging.mkdir()
        if trunk:
            (staging / trunk.folder).mkdir()
        for split, (paths, labels) in splits.items():
            size = len(paths)
            out = _array_file(staging / f"{split}_features.npy", (size, dim), dtype)
            if out is not None:
                files.enter_context(out)
                targets, source = [(out, 0)], batches
                if trunk and split in trunk.splits:
                    # Row v * N + i: view v of image i (0: as given, 1: mirrored, 2...: augmented copies).
                    cache = files.enter_context(RowFile.create(staging / trunk.folder / f"{split}.npy",
                                                               (trunk.views_of(split) * size, *trunk.shape), dtype))
                    targets, source = [(out, 0), (cache, 0), (cache, size)], joint
                    for copy in range(trunk.copies if split == "train" else 0):
                        _write_split(trunk_changed(paths), [(cache, (2 + copy) * size)], size, progress)
                _write_split(source(paths), targets, size, progress)
            np.save(staging / f"{split}_labels.npy", np.asarray(labels, dtype=np.int32))
        if copies:
            # Copy k of image i is row k * N + i; each pass draws new random changes.
            size = len(train_paths)
            rows = ((positions + copy * size, features) for copy in range(copies)
                    for positions, features in changed(train_paths))
            out = _array_file(staging / f"{TRAIN_VIEWS}_features.npy", (copies * size, dim), dtype)
            if out is not None:
                with out:
                    _write_split(rows, [(out, 0)], copies * size, progress)
            np.save(staging / f"{TRAIN_VIEWS}_labels.npy", np.tile(np.asarray(train_labels, np.int32), copies))
            counts[TRAIN_VIEWS] = copies * size
        if trunk:
            trunk_counts = {split: counts.get(split, 0) for split in trunk.splits}
            write_json(staging / trunk.folder / META_FILE, trunk.record(dtype, trunk_counts))
        write_json(
            staging / META_FILE,
            {
                **meta,
                "feature_dim": dim,
                "dtype": dtype,
                "counts": counts,
            },
        )
    end = time.perf_counter()
    stats = {
        "images": total,
        "seconds": round(end - start, 2),
        "trace_seconds": round(streaming - start, 2),
        "images_per_second": round(total / (end - streaming), 1),
    }
    log.info("extract-features: %d images in %.1f s (%.1f images/s after %.1f s tracing the backbone)", total,
             end - start, stats["images_per_second"], stats["trace_seconds"])
    return stats
