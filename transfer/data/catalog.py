"""Every image of the data set in one table for the data-quality checks: split, label, cached features and
thumbnail; and the cosine similarities those checks compare rows by, a block at a time.

The similarities are computed ``BLOCK`` rows at a time, so memory grows with the number of images, not with
its square; the time grows with its square (about a second for 4,000 images here). The thumbnails are read from
the photos (JPEGs decoded at reduced scale), a few percent of extraction's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer.data.splits import SPLITS, split_rows
from transfer.errors import DataError

BLOCK = 1024  # rows of the similarity matrix computed at a time
THUMBNAIL = 16  # side of the colour thumbnails near-duplicates are judged on


@dataclass
class Images:
    """Every image of the data set, train, val and test together, in split-file order."""

    files: list[str]  # paths relative to data/raw, as in data/splits/*.csv
    splits: np.ndarray  # [N] split names
    labels: np.ndarray  # [N] given class indices
    features: np.ndarray  # [N, D] float32
    classes: list[str]
    thumbnails: np.ndarray | None = None  # [N, THUMBNAIL * THUMBNAIL * 3] float32 (see :func:`thumbnails`)


def gather(features_by_split: dict[str, tuple[np.ndarray, np.ndarray]], files_by_split: dict[str, list[str]],
           classes: list[str]) -> Images:
    """One :class:`Images` from each split's cached (features, labels) and its file names.

    Raises:
        DataError: a split's features and its file list disagree in length (a stale cache).
    """
    files, splits, labels, features = [], [], [], []
    for split in SPLITS:
        if split not in features_by_split:
            continue
        x, y = features_by_split[split]
        names = files_by_split[split]
        if len(names) != len(x):
            raise DataError(f"the cached {split} features hold {len(x)} rows but data/splits/{split}.csv lists "
                            f"{len(names)} images; run extract-features again")
        files += names
        splits += [split] * len(names)
        labels.append(np.asarray(y, dtype=np.int64))
        features.append(np.asarray(x, dtype=np.float32))
    return Images(files=files, splits=np.asarray(splits), labels=np.concatenate(labels),
                  features=np.concatenate(features), classes=list(classes))


def load_images(store, splits_folder: Path, raw: Path) -> Images:
    """Every split's cached features (a :class:`transfer.model.features.FeatureStore`) with its file names, and
    every image's thumbnail, read from ``raw`` (data/raw)."""
    present = [split for split in SPLITS if split in store.meta.get("counts", {})]
    files = {split: [row["path"] for row in split_rows(splits_folder, split)] for split in present}
    images = gather({split: store.load(split) for split in present}, files, store.classes)
    images.thumbnails = thumbnails([raw / name for name in images.files])
    return images


def thumbnail(path: Path) -> np.ndarray:
    """One image as a ``THUMBNAIL`` x ``THUMBNAIL`` RGB thumbnail averaged with its mirror, flattened (float32).

    Upright as its EXIF orientation says (a copy saved by an editor has it applied); a JPEG is decoded at the
    smallest scale that still covers four times the thumbnail, so a large photo costs little.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("RGB", (4 * THUMBNAIL, 4 * THUMBNAIL))
        small = ImageOps.exif_transpose(image).convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32)
    return ((pixels + pixels[:, ::-1]) / 2).ravel()


def thumbnails(paths: list[Path]) -> np.ndarray:
    """[N, THUMBNAIL * THUMBNAIL * 3] thumbnails of ``paths`` (see :func:`thumbnail`), read by a few threads
    (Pillow decodes without the GIL). The images passed the split stage's checks, so each one decodes."""
    from concurrent.futures import ThreadPoolExecutor

    if not paths:
        return np.zeros((0, THUMBNAIL * THUMBNAIL * 3), dtype=np.float32)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return np.stack(list(pool.map(thumbnail, paths)))


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def similarity_blocks(unit: np.ndarray):
    """Each block of ``BLOCK`` rows of unit vectors, as (row indices, their cosine similarities to every row), each
    row's own set to -inf (never its own neighbour): the whole matrix, a block's memory at a time."""
    count = len(unit)
    for start in range(0, count, BLOCK):
        rows = np.arange(start, min(start + BLOCK, count))
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf
        yield rows, similarity
