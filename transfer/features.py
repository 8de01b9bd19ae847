"""The bottleneck cache: the frozen backbone runs once per dataset, and head experiments reuse its output.

Layout of a feature folder (``data/features/``):
    <split>_features.npy   [N, D] features, float16 by default
    <split>_labels.npy     [N] int32 class indices
    meta.json              backbone, weights, image size, feature dim, dtype, class names, counts
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from transfer.datasets import image_dataset
from transfer.errors import DataError
from transfer.io import atomic_path, read_json, write_json

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


def compiled_forward(extractor, image_size: tuple[int, int]):
    """The extractor as one traced graph for every batch size, the last, smaller batch included.

    Without a signature, the last batch of each split has a new shape and pays a second trace, which on a
    few hundred images costs as much as the forward passes themselves.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *image_size, 3], tf.float32)]
    return tf.function(lambda images: extractor(images, training=False), input_signature=signature)


def _write_split(
    forward, paths: list[str], out: Path, image_size: tuple[int, int], dim: int, batch_size: int, dtype: str, progress
) -> None:
    """Stream one split's images through ``forward`` into a preallocated array on disk."""
    from numpy.lib.format import open_memmap

    if not paths:
        np.save(out, np.zeros((0, dim), dtype=dtype))
        return
    array = open_memmap(out, mode="w+", dtype=dtype, shape=(len(paths), dim))
    position = 0
    for batch in image_dataset(paths, image_size, batch_size):
        features = forward(batch).numpy()
        array[position : position + len(features)] = features
        position += len(features)
        progress.update(len(features))
    array.flush()
    del array


def extract_features(
    extractor,
    image_size: tuple[int, int],
    splits: dict[str, tuple[list[str], np.ndarray]],
    target: Path,
    batch_size: int,
    dtype: str,
    meta: dict[str, Any],
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

    Returns:
        {"images": count, "seconds": wall time, "images_per_second": throughput}.
    """
    from tqdm import tqdm

    forward = compiled_forward(extractor, image_size)
    dim = int(extractor.output_shape[-1])
    total = sum(len(paths) for paths, _ in splits.values())
    start = time.perf_counter()
    with atomic_path(target) as staging, tqdm(total=total, unit="img", desc="extract-features") as progress:
        staging.mkdir()
        for split, (paths, labels) in splits.items():
            out = staging / f"{split}_features.npy"
            _write_split(forward, paths, out, image_size, dim, batch_size, dtype, progress)
            np.save(staging / f"{split}_labels.npy", np.asarray(labels, dtype=np.int32))
        write_json(
            staging / META_FILE,
            {
                **meta,
                "feature_dim": dim,
                "dtype": dtype,
                "counts": {split: len(paths) for split, (paths, _) in splits.items()},
            },
        )
    seconds = time.perf_counter() - start
    stats = {"images": total, "seconds": round(seconds, 2), "images_per_second": round(total / seconds, 1)}
    log.info("extract-features: %d images in %.1f s (%.1f images/s)", total, seconds, stats["images_per_second"])
    return stats
