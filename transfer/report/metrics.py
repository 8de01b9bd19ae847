"""Scoring the test split: accuracy, top-k, macro F1, per-class figures, the confusion table, and the
per-image prediction rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transfer.io import displayed_path, spreadsheet_safe
from transfer.model.scoring import probability_scores


def summary_metrics(labels: np.ndarray, probabilities: np.ndarray, top_k: int) -> dict[str, float]:
    """The headline figures for a split, as a flat dict for ``reports/metrics.json``.

    Args:
        labels: [N] true class indices.
        probabilities: [N, C] predicted class probabilities.
        top_k: k for top-k accuracy. With as many classes as k or fewer, every image is in its top k whatever the
            model says, so ``top_k_accuracy`` is None (not reported) rather than a meaningless 1.0.
    """
    from sklearn.metrics import precision_recall_fscore_support

    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    scores = probability_scores(labels, probabilities)
    # Stable sort on negated scores: among tied scores the lower class index ranks first, like argmax.
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=range(num_classes), average="macro", zero_division=0
    )
    return {
        "accuracy": scores["accuracy"],
        "loss": scores["loss"],
        "top_k_accuracy": float(np.mean((top == labels[:, None]).any(axis=1))) if top_k < num_classes else None,
        "top_k": top_k,
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "images": int(len(labels)),
    }


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class, keyed by class name."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(classes)), zero_division=0
    )
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }


def classification_report(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> tuple[str, dict]:
    """scikit-learn's classification report, as text and as a dict."""
    from sklearn.metrics import classification_report as report

    kwargs = dict(labels=list(range(len(classes))), target_names=list(classes), zero_division=0, digits=4)
    return report(labels, predicted, **kwargs), report(labels, predicted, output_dict=True, **kwargs)


def confusion_records(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> list[dict[str, str]]:
    """One {actual, predicted} record per image, by class name, for DVC's confusion template."""
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(labels, predicted, strict=True)]


def prediction_rows(
    paths: Sequence[str], labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    """A predictions table: path, label, predicted class, confidence, then one probability column per class.

    Returns:
        (header, rows).
    """
    names = [spreadsheet_safe(name) for name in classes]  # read in spreadsheets: no cell runs as a formula
    header = ["path", "label", "predicted", "confidence", *names]
    rows = [
        [spreadsheet_safe(displayed_path(path)), names[label], names[int(np.argmax(row))], f"{row.max():.6f}",
         *(f"{p:.6f}" for p in row)]
        for path, label, row in zip(paths, labels, probabilities, strict=True)
    ]
    return header, rows


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` wrong predictions, the most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
