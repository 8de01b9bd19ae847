"""Data you can trust: suspected label errors, near-duplicates across splits and outliers, from the cached features.

Everything here reads the bottleneck cache (every split's features) and the split files, so it costs seconds
and no backbone pass:

- **Out-of-fold probabilities.** A linear model (multinomial logistic regression on unit-length features) is
  trained k times on k - 1 folds of all images, train, val and test together; each image is scored by the
  model that never saw it.
- **Suspected label errors.** Every image whose out-of-fold best guess is another class is ranked by its
  self-confidence (the probability of its given label), lowest first. Confident learning (Northcutt, Jiang and
  Chuang, 2021) estimates how many labels are wrong: per-class thresholds (the mean probability a class gets
  on the images labelled with it), the confident joint of given against likely labels, calibrated to the
  class counts; its off-diagonal sum. That many of the ranking's first images are the suspects (cleanlab's
  ``low_self_confidence`` filter). On the dev photos with 5% of labels flipped, this ranking put 82-92% of
  the flipped images in its first 2x-as-many rows (five flip seeds), where pruning by noise rate found 78-86%.
- **Near-duplicates across splits**: pairs of images from different splits that are one picture, resized,
  re-encoded, recoloured slightly or mirrored (which the byte digests of the split stage cannot tell apart). A
  pair with a test (or val) image is a leak: the model was trained on a copy of what it is scored on. They are
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
- **Outliers**: images far from every class. An image's closeness to a class is its mean cosine similarity to
  its ``NEIGHBOURS`` nearest images of that class (itself left out); its outlier score is one minus its
  closeness to the nearest class. Scores far above the typical (beyond the upper quartile by ``OUTLIER_IQRS``
  interquartile ranges) are flagged.

The similarities are computed block by block (``BLOCK`` rows at a time), so memory grows with the number of
images, not with its square; the time grows with its square (about a second for 4,000 images here). The
thumbnails are read from the photos (JPEGs decoded at reduced scale), a few percent of extraction's time.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transfer.datasets import SPLITS, split_rows
from transfer.errors import DataError, UserError
from transfer.io import (
    atomic_path,
    from_spreadsheet_safe,
    read_csv,
    read_json,
    spreadsheet_safe,
    write_csv,
    write_json,
)
from transfer.layout import (
    LABEL_ISSUES,
    LABEL_ISSUES_FIGURE,
    NEAR_DUPLICATES,
    OUTLIERS,
    OUTLIERS_FIGURE,
    STAGE_METRICS,
)

log = logging.getLogger(__name__)

NEIGHBOURS = 5  # nearest images of a class that measure an image's closeness to it
OUTLIER_IQRS = 1.5  # flagged: an outlier score above the upper quartile by this many interquartile ranges (Tukey)
BLOCK = 1024  # rows of the similarity matrix computed at a time
PAIRS_PER_IMAGE = 5  # near-duplicates listed for each image: its most similar ones in other splits
THUMBNAIL = 16  # side of the colour thumbnails near-duplicates are judged on
USUAL_RANK = 5  # the nearest image of this rank gives an image's usual distance to the others
SAME_PICTURE = 0.99  # thumbnail similarity from which two images are one picture, whatever their neighbours
# Over this share of images with a near-duplicate in another split, quality.duplicate_ratio is too loose for the
# data: the report says so.
IMPLAUSIBLE_LEAK_SHARE = 0.5
PROBE_C = 10.0  # inverse regularisation strength of the out-of-fold logistic regression (unit-length rows)


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
    """Every split's cached features (a :class:`transfer.features.FeatureStore`) with its file names, and
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


def fold_count(labels: np.ndarray, folds: int) -> int:
    """The folds the out-of-fold scores use: ``folds`` (quality.folds), or fewer when no class has that many
    images, since stratified folds cannot outnumber the images of every class (60 classes of 3 photos, say).

    Raises:
        DataError: fewer than 2 images, or no class with 2.
    """
    if len(labels) < 2:
        raise DataError(f"out-of-fold scores need at least 2 images; the data set has {len(labels)}")
    largest = int(np.bincount(labels).max())
    if largest < 2:
        raise DataError("out-of-fold scores need a class with at least 2 images; every class has 1")
    return min(folds, largest)


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int,
                              seed: int) -> np.ndarray:
    """[N, n_classes] probabilities, each row from a model trained on the folds the image is not in.

    A class with fewer images than ``folds`` still gets its rows: stratification spreads what it has, and a
    fold's model that saw none of a class gives it probability 0.
    """
    import os

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    requested, folds = folds, fold_count(labels, folds)
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    if folds < requested:
        log.info("data quality: no class has more than %d images, so %d folds instead of quality.folds = %d",
                 folds, folds, requested)
    if smallest < folds:
        log.info("data quality: the smallest class has %d image(s), fewer than %d folds", smallest, folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    model = make_pipeline(Normalizer(), LogisticRegression(C=PROBE_C, max_iter=1000))
    with warnings.catch_warnings():
        # "The least populated class in y has only N members": said once above, in words that name the data.
        # A fold's training part may lack a class: its model gives that class 0, which is what is wanted.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        warnings.filterwarnings("ignore", message="Number of classes in training fold", category=RuntimeWarning)
        # The folds fit in parallel processes (a fit is single-threaded work): half the time on 2 cores.
        present = cross_val_predict(model, features, labels, cv=splitter, method="predict_proba",
                                    n_jobs=min(folds, os.cpu_count() or 1))
    probabilities = np.zeros((len(labels), n_classes), dtype=np.float64)
    probabilities[:, np.unique(labels)] = present  # columns in the order of the classes that have images
    return probabilities


def estimated_label_errors(labels: np.ndarray, probabilities: np.ndarray) -> int:
    """Confident learning's estimate of how many given labels are wrong (see the module's docstring).

    Args:
        labels: [N] given class indices.
        probabilities: [N, K] out-of-fold probabilities.
    """
    n_classes = probabilities.shape[1]
    present = np.bincount(labels, minlength=n_classes)
    # Per-class thresholds: the mean probability of class j among the images labelled j.
    thresholds = np.array([probabilities[labels == j, j].mean() if present[j] else 1.0 for j in range(n_classes)])
    above = probabilities >= thresholds - 1e-6
    # Each image counts for the likeliest class among those whose threshold it clears; none: not counted.
    likely = np.where(above, probabilities, -1.0).argmax(axis=1)
    counted = above.any(axis=1)
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (labels[counted], likely[counted]), 1)
    # Calibrated so that each row sums to the number of images with that given label.
    rows = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * present[:, None], rows, out=np.zeros_like(joint), where=rows > 0)
    return int(round(calibrated.sum() - np.trace(calibrated)))


def label_issue_ranking(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of the images whose out-of-fold best guess is not their given label, lowest self-confidence first."""
    disagree = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    return disagree[np.argsort(probabilities[disagree, labels[disagree]], kind="stable")]


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def outlier_scores(images: Images) -> np.ndarray:
    """[N] outlier scores from the features: 1 - the mean similarity to the NEIGHBOURS nearest images of the
    closest class, in one blocked pass."""
    unit = unit_rows(images.features)
    count = len(unit)
    members = [np.flatnonzero(images.labels == c) for c in range(len(images.classes))]
    scores = np.zeros(count)
    for start in range(0, count, BLOCK):
        rows = np.arange(start, min(start + BLOCK, count))
        similarity = _block_similarities(unit, rows)
        closest = np.full(len(rows), -np.inf)
        for group in members:
            k = min(NEIGHBOURS, len(group) - 1) if len(group) > 1 else len(group)
            if k == 0:
                continue
            within = similarity[:, group]
            nearest = -np.partition(-within, k - 1, axis=1)[:, :k]
            # An image alone in its class has only -inf there: the class says nothing about it.
            nearest = np.where(np.isfinite(nearest), nearest, np.nan)
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(nearest, axis=1) if np.isnan(nearest).any() else nearest.mean(axis=1)
            closest = np.fmax(closest, mean)
        scores[rows] = 1.0 - closest
    return scores


def _block_similarities(unit: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine similarities of unit ``rows`` to every row, each row's own set to -inf (never its own neighbour)."""
    similarity = unit[rows] @ unit.T
    similarity[np.arange(len(rows)), rows] = -np.inf
    return similarity


def usual_distances(unit: np.ndarray) -> np.ndarray:
    """[N] each image's distance (1 - similarity) to its ``USUAL_RANK``-th nearest other image (its farthest
    image when there are fewer)."""
    count = len(unit)
    rank = min(USUAL_RANK, count - 1)
    usual = np.zeros(count)
    if rank < 1:
        return usual
    for start in range(0, count, BLOCK):
        rows = np.arange(start, min(start + BLOCK, count))
        similarity = _block_similarities(unit, rows)
        usual[rows] = 1.0 - (-np.partition(-similarity, rank - 1, axis=1)[:, rank - 1])
    return np.maximum(usual, 0.0)  # copies' similarity may round to just over 1


def near_duplicates(images: Images, ratio: float) -> tuple[list[tuple[int, int, float, float]], int]:
    """Near-duplicate pairs across splits, judged on the thumbnails against each image's usual distance.

    Returns:
        ([(i, j, similarity, distance ratio)] with i < j, from different splits, most similar first: each
        image's ``PAIRS_PER_IMAGE`` most similar near ones, so every image that has one is listed), and the
        number of all such pairs, listed or not. The distance ratio is the pair's distance over the smaller of
        the two images' usual distances.
    """
    if images.thumbnails is None:
        raise ValueError("near-duplicates need the images' thumbnails (quality.load_images reads them)")
    thumbs = np.asarray(images.thumbnails, dtype=np.float32)
    unit = unit_rows(thumbs - thumbs.mean(axis=0)) if len(thumbs) else thumbs
    usual = usual_distances(unit)
    count = len(unit)
    listed: dict[tuple[int, int], tuple[float, float]] = {}
    total = 0
    columns = np.arange(count)
    for start in range(0, count, BLOCK):
        rows = np.arange(start, min(start + BLOCK, count))
        similarity = _block_similarities(unit, rows)
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
                    listed[pair] = (float(similarity[position, j]), value if np.isfinite(value) else 0.0)
    pairs = [(a, b, similarity, value) for (a, b), (similarity, value) in listed.items()]
    pairs.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
    return pairs, total


def flagged_outliers(scores: np.ndarray) -> np.ndarray:
    """Indices of the images whose score is beyond the upper quartile by OUTLIER_IQRS IQRs, the farthest first."""
    lower, upper = np.percentile(scores, [25, 75])
    cutoff = upper + OUTLIER_IQRS * (upper - lower)
    flagged = np.flatnonzero(scores > cutoff)
    return flagged[np.argsort(-scores[flagged], kind="stable")]


@dataclass
class QualityReport:
    """What :func:`assess` found, as rows ready for the CSV files and figures."""

    probabilities: np.ndarray
    ranking: np.ndarray  # every image whose best guess is another class, lowest self-confidence first
    estimated_errors: int  # confident learning's estimate of the wrong labels
    pairs: list[tuple[int, int, float, float]]  # listed: each image's PAIRS_PER_IMAGE most similar across splits
    pair_count: int  # every near pair across splits
    scores: np.ndarray
    outliers: np.ndarray

    @property
    def suspects(self) -> np.ndarray:
        """The first ``estimated_errors`` images of the ranking."""
        return self.ranking[: self.estimated_errors]


def assess(images: Images, folds: int, ratio: float, seed: int) -> QualityReport:
    """The whole report: out-of-fold label suspects, near-duplicates at ``ratio`` (quality.duplicate_ratio),
    outliers."""
    probabilities = out_of_fold_probabilities(images.features, images.labels, len(images.classes), folds, seed)
    pairs, pair_count = near_duplicates(images, ratio)
    scores = outlier_scores(images)
    return QualityReport(probabilities=probabilities, ranking=label_issue_ranking(images.labels, probabilities),
                         estimated_errors=estimated_label_errors(images.labels, probabilities),
                         pairs=pairs, pair_count=pair_count, scores=scores, outliers=flagged_outliers(scores))


def leaked(images: Images, pairs: list[tuple[int, int, float, float]], split: str = "test") -> np.ndarray:
    """Indices of the ``split`` images with a near-duplicate in another split, sorted."""
    return np.array(sorted({index for pair in pairs for index in pair[:2] if images.splits[index] == split}),
                    dtype=np.int64)


def leaked_test_files(near_duplicates: Path) -> set[str] | None:
    """The test images (paths relative to data/raw) that ``near_duplicates.csv`` pairs with an image of another
    split; None when the file does not exist (the report is off, ``quality.report: false``): not checked."""
    if not near_duplicates.is_file():
        return None
    return {from_spreadsheet_safe(row[f"file_{side}"]) for row in read_csv(near_duplicates) for side in "ab"
            if row[f"split_{side}"] == "test"}


def implausible_duplicates(images: Images, report: QualityReport, ratio: float) -> str | None:
    """A warning when more than ``IMPLAUSIBLE_LEAK_SHARE`` of the images have a near-duplicate in another split:
    copies of that many are rarer than a setting too loose for this data; else None."""
    paired = {index for pair in report.pairs for index in pair[:2]}
    if len(paired) <= IMPLAUSIBLE_LEAK_SHARE * len(images.files):
        return None
    return (f"{len(paired)} of {len(images.files)} images have a near-duplicate in another split at "
            f"quality.duplicate_ratio = {ratio}: so many copies are unlikely. Look at the highest ratios of "
            f"{NEAR_DUPLICATES} and lower it; until then the leak counts and accuracy_without_leaked mean little")


def label_issue_rows(images: Images, report: QualityReport) -> list[list[Any]]:
    rows = []
    for rank, index in enumerate(report.ranking, start=1):
        suggested = int(np.argmax(report.probabilities[index]))
        given = images.labels[index]
        rows.append([rank, spreadsheet_safe(images.files[index]), images.splits[index],
                     spreadsheet_safe(images.classes[given]), spreadsheet_safe(images.classes[suggested]),
                     round(float(report.probabilities[index, images.labels[index]]), 4),
                     round(float(report.probabilities[index, suggested]), 4),
                     int(rank <= report.estimated_errors)])
    return rows


LABEL_ISSUE_COLUMNS = ["rank", "file", "split", "given_label", "suggested_label", "self_confidence",
                       "suggested_confidence", "suspect"]
DUPLICATE_COLUMNS = ["file_a", "split_a", "label_a", "file_b", "split_b", "label_b", "similarity", "ratio",
                     "leak"]
OUTLIER_COLUMNS = ["rank", "file", "split", "label", "outlier_score", "suggested_label"]


def duplicate_rows(images: Images, pairs: list[tuple[int, int, float, float]]) -> list[list[Any]]:
    rows = []
    for a, b, similarity, ratio in pairs:
        kinds = {str(images.splits[a]), str(images.splits[b])}
        leak = "train-test" if kinds == {"train", "test"} else "val-test" if kinds == {"val", "test"} else "train-val"
        rows.append([*(value for index in (a, b) for value in (
            spreadsheet_safe(images.files[index]), images.splits[index],
            spreadsheet_safe(images.classes[images.labels[index]]))), round(similarity, 4), round(ratio, 4), leak])
    return rows


def outlier_rows(images: Images, report: QualityReport) -> list[list[Any]]:
    predicted = report.probabilities.argmax(axis=1)
    return [[rank, spreadsheet_safe(images.files[index]), images.splits[index],
             spreadsheet_safe(images.classes[images.labels[index]]), round(float(report.scores[index]), 4),
             spreadsheet_safe(images.classes[predicted[index]])]
            for rank, index in enumerate(report.outliers, start=1)]


def accuracy_without(labels: np.ndarray, predicted: np.ndarray, dropped) -> float | None:
    """Accuracy over the images not in ``dropped`` (positions within these arrays); None if none are left."""
    keep = np.ones(len(labels), dtype=bool)
    keep[dropped] = False
    return float(np.mean(predicted[keep] == labels[keep])) if keep.any() else None


def summary(images: Images, report: QualityReport, folds: int, ratio: float) -> dict[str, Any]:
    """The counts that go into ``dvc metrics`` and MLflow."""
    predicted = report.probabilities.argmax(axis=1)
    per_split = {split: int(np.sum(images.splits[report.suspects] == split)) for split in SPLITS}
    return {
        "images": len(images.files),
        "folds": folds,
        "out_of_fold_accuracy": round(float(np.mean(predicted == images.labels)), 4),
        "label_issues": len(report.suspects),
        "label_issues_train": per_split["train"],
        "label_issues_val": per_split["val"],
        "label_issues_test": per_split["test"],
        "duplicate_ratio": ratio,
        "near_duplicate_pairs": report.pair_count,
        "near_duplicate_pairs_listed": len(report.pairs),
        "leaked_test_images": int(len(leaked(images, report.pairs, "test"))),
        "leaked_val_images": int(len(leaked(images, report.pairs, "val"))),
        "outliers": len(report.outliers),
    }


def gallery_entries(images: Images, raw: Path, report: QualityReport, count: int, kind: str
                    ) -> list[tuple[Path, str]]:
    """(image path, caption) for the top ``count`` label suspects (``kind="label_issues"``) or outliers."""
    entries = []
    if kind == "label_issues":
        for index in report.suspects[:count]:
            suggested = int(np.argmax(report.probabilities[index]))
            entries.append((raw / images.files[index],
                            f"given: {images.classes[images.labels[index]]} ({images.splits[index]})\n"
                            f"suggested: {images.classes[suggested]} ({report.probabilities[index, suggested]:.2f})"))
    else:
        for index in report.outliers[:count]:
            entries.append((raw / images.files[index],
                            f"{images.classes[images.labels[index]]} ({images.splits[index]})\n"
                            f"outlier score {report.scores[index]:.2f}"))
    return entries


def write_report(images: Images, report: QualityReport, folder: Path, raw: Path, gallery: int,
                 metrics: dict[str, Any]) -> None:
    """The report folder, whole or not at all: the three CSV files, the two galleries and ``metrics.json``."""
    from transfer.reports import plot_gallery

    with atomic_path(folder) as staging:
        staging.mkdir()
        write_csv(staging / LABEL_ISSUES, LABEL_ISSUE_COLUMNS, label_issue_rows(images, report))
        write_csv(staging / NEAR_DUPLICATES, DUPLICATE_COLUMNS, duplicate_rows(images, report.pairs))
        write_csv(staging / OUTLIERS, OUTLIER_COLUMNS, outlier_rows(images, report))
        shown = min(gallery, len(report.suspects))
        plot_gallery(gallery_entries(images, raw, report, gallery, "label_issues"), staging / LABEL_ISSUES_FIGURE,
                     f"Suspected label errors: the first {shown} of {len(report.suspects)} "
                     f"(out-of-fold, {metrics['folds']} folds)", "no suspected label error")
        shown = min(gallery, len(report.outliers))
        plot_gallery(gallery_entries(images, raw, report, gallery, "outliers"), staging / OUTLIERS_FIGURE,
                     f"Outliers: the first {shown} of {len(report.outliers)}, far from every class", "no outlier")
        write_json(staging / STAGE_METRICS, metrics)


def write_report_off(folder: Path) -> None:
    """The report folder when ``quality.report`` is false, whole or not at all: ``metrics.json`` saying nothing
    was checked, and the two figures saying so (the DVC plots name them); no CSV, so nothing reads as "none
    found"."""
    from transfer.reports import plot_gallery

    off = "not checked: quality.report is false"
    with atomic_path(folder) as staging:
        staging.mkdir()
        plot_gallery([], staging / LABEL_ISSUES_FIGURE, "Suspected label errors", off)
        plot_gallery([], staging / OUTLIERS_FIGURE, "Outliers", off)
        write_json(staging / STAGE_METRICS, {"checked": False})


def add_exclusions(report: Path, exclude: Path, splits: list[str], top: int | None, outliers: bool) -> dict:
    """Add the flagged suspects (or the first ``top`` ranked rows), and with ``outliers`` the flagged outliers,
    of ``splits`` to the ``exclude`` CSV, keeping its rows; returns what was added.

    Raises:
        UserError: an unknown split, or no report (run the pipeline first).
    """
    unknown = [name for name in splits if name not in SPLITS]
    if unknown or not splits:
        raise UserError(f"--splits {','.join(splits) or '(none)'} is invalid: expected some of "
                        f"{', '.join(SPLITS)}")
    issues_path = report / LABEL_ISSUES
    if not issues_path.is_file():
        if (report / STAGE_METRICS).is_file() and read_json(report / STAGE_METRICS).get("checked") is False:
            raise UserError(f"{report} holds no report: quality.report is false; set it to true and run "
                            "`dvc repro` (extract-features writes it) first")
        raise UserError(f"{issues_path} does not exist; run the pipeline (dvc repro) first")
    ranked = read_csv(issues_path)
    chosen = ranked[:top] if top is not None else [row for row in ranked if row["suspect"] == "1"]
    if outliers:
        chosen += read_csv(report / OUTLIERS)
    names = [from_spreadsheet_safe(row["file"]) for row in chosen if row["split"] in splits]
    rows = read_csv(exclude) if exclude.is_file() else []
    header = list(rows[0]) if rows else ["file"]
    if rows and "file" not in header:
        raise UserError(f"{exclude} has no 'file' column; its header is {','.join(header)}")
    existing = {from_spreadsheet_safe(row["file"]) for row in rows}
    added = [name for name in dict.fromkeys(names) if name not in existing]
    # Rows already there stay as they were, other columns included; the new ones fill in only the file.
    write_csv(exclude, header, [*([row[key] for key in header] for row in rows),
                                *([spreadsheet_safe(name) if key == "file" else "" for key in header]
                                  for name in added)])
    return {"file": str(exclude), "added": len(added), "total": len(rows) + len(added), "splits": splits}
