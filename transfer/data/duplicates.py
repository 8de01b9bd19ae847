"""Near-duplicates across splits: pairs of images from different splits that are one picture, resized,
re-encoded, recoloured slightly or mirrored (which the byte digests of the split stage cannot tell apart).

A pair with a test (or val) image is a leak: the model was trained on a copy of what it is scored on. They are
found on thumbnails, not on the backbone's features: a ``THUMBNAIL`` x ``THUMBNAIL`` colour thumbnail of each
image, averaged with its mirror, less the data set's mean thumbnail (so a background every photo shares
cancels out), compared by cosine similarity. Judged against the data's own spread: a pair is near when its
distance (1 - similarity) is at most ``quality.duplicate_ratio`` times each image's distance to its
``USUAL_RANK``-th nearest image, or when the two are the same picture (similarity ``SAME_PICTURE`` or more, for
a cluster of many copies, whose usual neighbours are copies too). Pooled features are the wrong tool for this:
on photos of objects against one plain background, a re-encoded copy's features were often further from its
original's than other photos' were (bench/duplicates.py).
All of them are counted; each image's ``PAIRS_PER_IMAGE`` most similar are listed, so the list grows with
the number of images, not with its square, and every image with a near-duplicate is in it.
"""

from __future__ import annotations

import math

import numpy as np

from transfer.data.catalog import Images, similarity_blocks, unit_rows

PAIRS_PER_IMAGE = 5  # near-duplicates listed for each image: its most similar ones in other splits
USUAL_RANK = 5  # the nearest image of this rank gives an image's usual distance to the others
SAME_PICTURE = 0.99  # thumbnail similarity from which two images are one picture, whatever their neighbours


def usual_distances(unit: np.ndarray) -> np.ndarray:
    """[N] each image's distance (1 - similarity) to its ``USUAL_RANK``-th nearest other image (its farthest
    image when there are fewer)."""
    count = len(unit)
    rank = min(USUAL_RANK, count - 1)
    usual = np.zeros(count)
    if rank < 1:
        return usual
    for rows, similarity in similarity_blocks(unit):
        usual[rows] = 1.0 - (-np.partition(-similarity, rank - 1, axis=1)[:, rank - 1])
    return np.maximum(usual, 0.0)  # copies' similarity may round to just over 1


def near_duplicates(images: Images, ratio: float) -> tuple[list[tuple[int, int, float, float]], int]:
    """Near-duplicate pairs across splits, judged on the thumbnails against each image's usual distance.

    Returns:
        ([(i, j, similarity, distance ratio)] with i < j, from different splits, most similar first: each
        image's ``PAIRS_PER_IMAGE`` most similar near ones, so every image that has one is listed), and the
        number of all such pairs, listed or not. The distance ratio is the pair's distance over the smaller of
        the two images' usual distances; NaN where that is 0 (images whose usual neighbours are copies of them)
        and the pair is near by ``SAME_PICTURE`` alone.
    """
    if images.thumbnails is None:
        raise ValueError("near-duplicates need the images' thumbnails (catalog.load_images reads them)")
    thumbs = np.asarray(images.thumbnails, dtype=np.float32)
    unit = unit_rows(thumbs - thumbs.mean(axis=0)) if len(thumbs) else thumbs
    usual = usual_distances(unit)
    count = len(unit)
    listed: dict[tuple[int, int], tuple[float, float]] = {}
    total = 0
    columns = np.arange(count)
    for rows, similarity in similarity_blocks(unit):
        distance = np.maximum(1.0 - similarity, 0.0)
        scale = np.minimum(usual[rows][:, None], usual[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            # An image whose usual neighbours are copies of it has no spread to judge by: SAME_PICTURE decides.
            ratios = np.where(scale > 0, distance / scale, np.where(distance > 0, np.inf, 0.0))
        near = ((ratios <= ratio) | (similarity >= SAME_PICTURE)) & np.isfinite(similarity)
        near &= images.splits[rows][:, None] != images.splits[None, :]
        total += int(np.count_nonzero(near & (columns[None, :] > rows[:, None])))
        found = np.flatnonzero(near.any(axis=1))
        if not len(found):
            continue
        candidates = np.where(near[found], similarity[found], -np.inf)
        k = min(PAIRS_PER_IMAGE, count)
        for position, best in zip(found, np.argpartition(-candidates, k - 1, axis=1)[:, :k], strict=True):
            i = int(rows[position])
            for j in best.tolist():  # fewer than k near ones: the rest are -inf, not near
                pair = (min(i, j), max(i, j))
                # One value per pair, whichever image lists it: the one computed from the earlier image's row.
                if near[position, j] and (pair not in listed or i < j):
                    value = float(ratios[position, j])
                    listed[pair] = (float(similarity[position, j]), value if np.isfinite(value) else math.nan)
    pairs = [(a, b, similarity, value) for (a, b), (similarity, value) in listed.items()]
    pairs.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
    return pairs, total


def leaked(images: Images, pairs: list[tuple[int, int, float, float]], split: str = "test") -> np.ndarray:
    """Indices of the ``split`` images with a near-duplicate in another split, sorted."""
    return np.array(sorted({index for pair in pairs for index in pair[:2] if images.splits[index] == split}),
                    dtype=np.int64)
