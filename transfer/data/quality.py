"""The data-quality checks on the cached features: suspected label errors and outliers, with the near-duplicates
of :mod:`transfer.data.duplicates`, gathered into one :class:`QualityReport`.

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
- **Outliers**: images far from every class. An image's closeness to a class is its mean cosine similarity to
  its ``NEIGHBOURS`` nearest images of that class (itself left out); its outlier score is one minus its
  closeness to the nearest class. Scores far above the typical (beyond the upper quartile by ``OUTLIER_IQRS``
  interquartile ranges) are flagged.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from transfer.data.catalog import Images, similarity_blocks, unit_rows
from transfer.data.duplicates import near_duplicates
from transfer.data.pipeline import cpu_count
from transfer.errors import DataError
from transfer.layout import NEAR_DUPLICATES

log = logging.getLogger(__name__)

NEIGHBOURS = 5  # nearest images of a class that measure an image's closeness to it
OUTLIER_IQRS = 1.5  # flagged: an outlier score above the upper quartile by this many interquartile ranges (Tukey)
# Over this share of images with a near-duplicate in another split, quality.duplicate_ratio is too loose for the
# data: the report says so.
IMPLAUSIBLE_LEAK_SHARE = 0.5
PROBE_C = 10.0  # inverse regularisation strength of the out-of-fold logistic regression (unit-length rows)
# The folds fit in parallel processes from this many feature values (images x width) up. Below it, starting the
# processes costs more than it saves: on 2 cores, 45 x 2,048 values took 0.16 s in one process and 3.7 s in two;
# 700 x 1,280 2.5 s against 3.2 s; 1,000 x 1,280 3.1 s either way; 2,000 x 1,280 5.8 s against 3.9 s.
PARALLEL_FOLDS_FROM = 1_500_000


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
        # On a large set the folds fit in parallel processes (a fit is single-threaded work): half the time on 2
        # cores. The processes change nothing in the result.
        jobs = min(folds, cpu_count()) if features.size >= PARALLEL_FOLDS_FROM else 1
        present = cross_val_predict(model, features, labels, cv=splitter, method="predict_proba", n_jobs=jobs)
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


def outlier_scores(images: Images) -> np.ndarray:
    """[N] outlier scores from the features: 1 - the mean similarity to the NEIGHBOURS nearest images of the
    closest class, in one blocked pass."""
    unit = unit_rows(images.features)
    count = len(unit)
    members = [np.flatnonzero(images.labels == c) for c in range(len(images.classes))]
    scores = np.zeros(count)
    for rows, similarity in similarity_blocks(unit):
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
    folds: int  # the folds the out-of-fold probabilities took (fewer than quality.folds for small classes)
    ratio: float  # the quality.duplicate_ratio the pairs were judged at

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
                         pairs=pairs, pair_count=pair_count, scores=scores, outliers=flagged_outliers(scores),
                         folds=fold_count(images.labels, folds), ratio=ratio)


def implausible_duplicates(images: Images, report: QualityReport) -> str | None:
    """A warning when more than ``IMPLAUSIBLE_LEAK_SHARE`` of the images have a near-duplicate in another split:
    copies of that many are rarer than a setting too loose for this data; else None."""
    paired = {index for pair in report.pairs for index in pair[:2]}
    if len(paired) <= IMPLAUSIBLE_LEAK_SHARE * len(images.files):
        return None
    return (f"{len(paired)} of {len(images.files)} images have a near-duplicate in another split at "
            f"quality.duplicate_ratio = {report.ratio}: so many copies are unlikely. Look at the highest ratios of "
            f"{NEAR_DUPLICATES} and lower it; until then the leak counts and accuracy_without_leaked mean little")


def accuracy_without(labels: np.ndarray, predicted: np.ndarray, dropped) -> float | None:
    """Accuracy over the images not in ``dropped`` (positions within these arrays); None if none are left."""
    keep = np.ones(len(labels), dtype=bool)
    keep[dropped] = False
    return float(np.mean(predicted[keep] == labels[keep])) if keep.any() else None
