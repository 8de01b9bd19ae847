"""The figures every run leaves behind: the confusion matrix, the training curves, per-class F1 and the most
confident mistakes. Drawn headless, one PNG per concern, with titles, axis labels and class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transfer.plotting import drawable, plot_gallery, save_figure
from transfer.report.metrics import confident_mistakes, confusion_counts


def plot_confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Counts and row-normalised (recall per class) confusion matrices, side by side: true classes down, predicted
    across, each cell's value written in it up to 30 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [drawable(name) for name in classes]
    counts = confusion_counts(labels, predicted, len(names))
    support = counts.sum(axis=1, keepdims=True)
    # A class without test images has a row of 0s, not of NaNs.
    recall = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    side = max(4.5, 0.45 * len(names) + 2.5)
    # Constrained layout keeps the right panel's class names clear of the left panel's colour bar.
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side), layout="constrained")
    for axis, matrix, title, fmt in ((axes[0], counts, "Counts", "d"),
                                     (axes[1], recall, "Normalised by true class", ".2f")):
        _confusion_panel(figure, axis, matrix, names, fmt)
        axis.set(title=title, xlabel="Predicted class", ylabel="True class")
    figure.suptitle(f"Confusion matrix on the test split ({len(labels)} images)")
    save_figure(figure, path)


def _confusion_panel(figure, axis, matrix: np.ndarray, names: list[str], fmt: str) -> None:
    """One confusion matrix in blues, with its colour bar, class names on both axes and (up to 30 classes) each
    cell's value, in white on the darker half of the scale."""
    image = axis.imshow(matrix, cmap="Blues", vmin=0, interpolation="nearest")
    figure.colorbar(image, ax=axis)
    if len(names) <= 30:
        middle = matrix.max() / 2
        for (row, column), value in np.ndenumerate(matrix):
            axis.text(column, row, format(value, fmt), ha="center", va="center", fontsize=8,
                      color="white" if value > middle else "black")
    ticks = np.arange(len(names))
    if len(names) > 8:  # upright names, one under each column
        axis.set_xticks(ticks, names, rotation=90)
    else:  # slanted names, each ending under its column
        axis.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
    axis.set_yticks(ticks, names)


def plot_history(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy and loss per epoch, train against validation (epoch 0, the starting model, has validation only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in rows]
    for axis, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            points = [(epoch, row[prefix + metric]) for epoch, row in zip(epochs, rows, strict=True)
                      if row[prefix + metric] is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        axis.set(title=metric.capitalize(), xlabel="Epoch", ylabel=metric)
        if rows:
            axis.legend()
        else:
            axis.text(0.5, 0.5, "no training epochs", ha="center", va="center", transform=axis.transAxes)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    save_figure(figure, path)


def plot_per_class(per_class: dict[str, dict], path: Path) -> None:
    """Precision, recall and F1 of each class as grouped bars, support in the tick labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_class)
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.5))
    for offset, metric in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1"), strict=True):
        axis.bar(positions + offset, [per_class[name][metric] for name in names], width=0.27, label=metric)
    axis.set_xticks(positions, [f"{drawable(name)}\n(n={per_class[name]['support']})" for name in names],
                    rotation=90 if len(names) > 10 else 0)
    axis.set(ylim=(0, 1.15), ylabel="score", xlabel="Class (test images)", title="Per-class precision, recall and F1")
    axis.legend(loc="upper center", ncol=3)  # above the bars, in the headroom over 1.0
    axis.grid(axis="y", alpha=0.3)
    save_figure(figure, path)


def plot_confident_mistakes(
    paths: Sequence[str], labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], path: Path,
    count: int = 12,
) -> None:
    """A gallery of the wrong predictions the model was surest of: image, true and predicted class, confidence."""
    predicted = probabilities.argmax(axis=1)
    wrong = int(np.sum(predicted != labels))
    worst = confident_mistakes(labels, probabilities, count)
    entries = [(paths[index], f"true: {classes[labels[index]]}\npredicted: {classes[predicted[index]]} "
                              f"({probabilities[index, predicted[index]]:.2f})") for index in worst]
    plot_gallery(entries, path, f"Most confident mistakes ({len(worst)} of {wrong} wrong)",
                 "no mistakes on the test split")
