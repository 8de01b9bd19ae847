"""Scoring the test split: accuracy, top-k, macro F1, per-class figures, the confusion counts and table, and the
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
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    scores = probability_scores(labels, probabilities)
    # Stable sort on negated scores: among tied scores the lower class index ranks first, like argmax.
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    per_class = class_scores(labels, predicted, num_classes)
    return {
        "accuracy": scores["accuracy"],
        "loss": scores["loss"],
        "top_k_accuracy": float(np.mean((top == labels[:, None]).any(axis=1))) if top_k < num_classes else None,
        "top_k": top_k,
        # Macro: every class counts once, a class without test images or predictions with its 0s.
        "macro_precision": float(np.mean(per_class["precision"])),
        "macro_recall": float(np.mean(per_class["recall"])),
        "macro_f1": float(np.mean(per_class["f1"])),
        "images": int(len(labels)),
    }


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """[true class, predicted class] image counts, every class a row and a column, absent ones too."""
    pairs = np.asarray(labels, np.int64) * num_classes + np.asarray(predicted, np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole as floats, 0 where ``whole`` is 0 (a figure with nothing to measure counts as 0)."""
    part, whole = np.asarray(part, np.float64), np.asarray(whole, np.float64)
    return np.divide(part, whole, out=np.zeros_like(part), where=whole > 0)


def class_scores(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class index, as arrays of ``num_classes``.

    Computed here from the confusion counts rather than with scikit-learn, whose import alone is about a second of
    evaluate's start; tests/code/test_reports.py holds every figure equal to scikit-learn's ``zero_division=0``
    ones. A figure without anything to measure (a class never predicted, or without an image) is 0.
    """
    counts = confusion_counts(labels, predicted, num_classes)
    right, support, called = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    # F1 = 2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall where both are defined.
    return {"precision": _share(right, called), "recall": _share(right, support),
            "f1": _share(2 * right, support + called), "support": support}


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class, keyed by class name."""
    scores = class_scores(labels, predicted, len(classes))
    return {
        name: {"precision": float(scores["precision"][index]), "recall": float(scores["recall"][index]),
               "f1": float(scores["f1"][index]), "support": int(scores["support"][index])}
        for index, name in enumerate(classes)
    }


def classification_report(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str],
                          digits: int = 4) -> tuple[str, dict]:
    """The per-class report in scikit-learn's layout, as text and as a dict: a row per class, then accuracy and
    the macro and support-weighted averages."""
    scores = class_scores(labels, predicted, len(classes))
    support, total = scores["support"], int(scores["support"].sum())
    columns = {"precision": scores["precision"], "recall": scores["recall"], "f1-score": scores["f1"]}
    as_dict: dict = {name: {**{column: float(values[index]) for column, values in columns.items()},
                            "support": float(support[index])} for index, name in enumerate(classes)}
    as_dict["accuracy"] = float(np.mean(labels == predicted))
    for row, weights in (("macro avg", None), ("weighted avg", support)):
        as_dict[row] = {**{column: float(np.average(values, weights=weights)) for column, values in columns.items()},
                        "support": float(total)}

    width = max(len("weighted avg"), digits, *(len(name) for name in classes))

    def line(name: str, cells: Sequence[str], count: int) -> str:
        return f"{name:>{width}} " + "".join(f" {cell:>9}" for cell in cells) + f" {count:>9}\n"

    def figures(name: str) -> list[str]:
        return [f"{as_dict[name][column]:.{digits}f}" for column in columns]

    text = f"{'':>{width}} " + "".join(f" {column:>9}" for column in (*columns, "support")) + "\n\n"
    text += "".join(line(name, figures(name), int(support[index])) for index, name in enumerate(classes))
    text += "\n" + line("accuracy", ["", "", f"{as_dict['accuracy']:.{digits}f}"], total)
    text += "".join(line(row, figures(row), total) for row in ("macro avg", "weighted avg"))
    return text, as_dict


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
