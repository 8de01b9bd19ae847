"""Scoring predictions and drawing the figures every run leaves behind.

Figures are drawn headless (Agg), one PNG per concern, with titles, axis labels and class names.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transfer.io import atomic_path, displayed_path, spreadsheet_safe

PROBABILITY_EPSILON = 1e-7  # Keras' epsilon: a probability of 0 costs -log(1e-7), not infinity.


def probability_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Cross-entropy (no label smoothing) and accuracy of [N, C] probabilities against [N] class indices."""
    true_probability = np.clip(probabilities[np.arange(len(labels)), labels], PROBABILITY_EPSILON, 1.0)
    return {"loss": float(np.mean(-np.log(true_probability))),
            "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels))}


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


@functools.lru_cache(maxsize=1)
def _figure_font():
    """The font the figures' text is drawn in (matplotlib's default family), to ask which glyphs it has."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_manager.findfont(font_manager.FontProperties()))


def drawable(name: str) -> str:
    """``name`` with each character the figures' font lacks (emoji, most often) replaced by its Unicode name in
    angle brackets (``<ROSE> rose``), so that no class shows as empty boxes; other names are unchanged."""
    font = _figure_font()
    parts = []
    for char in name:
        if char.isspace() or font.get_char_index(ord(char)):
            parts.append(char)
        elif unicodedata.category(char) in ("Mn", "Cf", "Sk"):  # joiners, variation selectors, skin tones
            continue
        else:
            parts.append(f"<{unicodedata.name(char, f'U+{ord(char):04X}')}>")
    return "".join(parts)


def save_figure(figure, path: Path, dpi: int = 110, tight: bool = True) -> None:
    """Every figure's one way to disk: a PNG written whole or not at all, and the figure closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight" if tight else None, format="png")
    plt.close(figure)


def plot_confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Counts and row-normalised (recall per class) confusion matrices, side by side (scikit-learn's display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    names = [drawable(name) for name in classes]
    side = max(4.5, 0.45 * len(names) + 2.5)
    # Constrained layout keeps the right panel's class names clear of the left panel's colour bar.
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side), layout="constrained")
    for axis, normalize, title, fmt in ((axes[0], None, "Counts", "d"),
                                        (axes[1], "true", "Normalised by true class", ".2f")):
        with np.errstate(invalid="ignore", divide="ignore"):  # a class with no test image: its row is 0
            ConfusionMatrixDisplay.from_predictions(
                labels, predicted, labels=list(range(len(names))), display_labels=names, normalize=normalize,
                ax=axis, cmap="Blues", values_format=fmt, include_values=len(names) <= 30,
                xticks_rotation=90 if len(names) > 8 else 45, text_kw={"fontsize": 8})
        axis.set(title=title, xlabel="Predicted class", ylabel="True class")
    figure.suptitle(f"Confusion matrix on the test split ({len(labels)} images)")
    save_figure(figure, path)


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


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` wrong predictions, the most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]


def plot_gallery(entries: Sequence[tuple[str | Path, str]], path: Path, title: str, empty: str) -> None:
    """Images upright (EXIF orientation applied, as the model sees them), each with its caption, four a row.

    Args:
        entries: (image path, caption) in the order shown.
        path: the PNG to write.
        title: the figure's title.
        empty: what the figure says when there is no entry.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, ImageOps

    columns = min(4, max(1, len(entries)))
    rows = max(1, -(-len(entries) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image_path, caption) in zip(axes.flat, entries, strict=False):
        with Image.open(image_path) as image:
            image.draft("RGB", (320, 320))  # a JPEG decodes at a fraction of its size: a thumbnail is enough
            axis.imshow(ImageOps.exif_transpose(image).convert("RGB"))
        axis.set_title(drawable(caption), fontsize=9)
    if not entries:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
    figure.suptitle(drawable(title))
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
