"""Evaluation figures equal scikit-learn's on known predictions; reports and figures are written."""

import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as sk

from tests.helpers import REPO
from transfer.io import read_csv, write_csv
from transfer.plotting import drawable
from transfer.report.figures import plot_confident_mistakes, plot_confusion_matrix, plot_history, plot_per_class
from transfer.report.metrics import (
    classification_report,
    confident_mistakes,
    confusion_counts,
    confusion_records,
    per_class_metrics,
    prediction_rows,
    summary_metrics,
)

CLASSES = ["cat", "dog", "fox", "owl"]


@pytest.fixture
def known():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=60)
    logits = rng.normal(size=(60, 4)) + 2.0 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def test_summary_metrics_equal_scikit_learn(known):
    labels, probabilities = known
    predicted = probabilities.argmax(1)
    figures = summary_metrics(labels, probabilities, top_k=2)
    precision, recall, f1, _ = sk.precision_recall_fscore_support(labels, predicted, average="macro")
    assert figures["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert figures["loss"] == pytest.approx(sk.log_loss(labels, probabilities, labels=range(4)), rel=1e-6)
    assert figures["top_k_accuracy"] == pytest.approx(sk.top_k_accuracy_score(labels, probabilities, k=2))
    assert (figures["macro_precision"], figures["macro_recall"], figures["macro_f1"]) == pytest.approx(
        (precision, recall, f1)
    )
    assert 0.3 < figures["accuracy"] < 1.0, "the fixture should be neither trivial nor hopeless"
    assert figures["top_k"] == 2 and figures["images"] == 60


def test_top_k_of_every_class_is_not_reported_as_a_perfect_score(known):
    """evaluate.top_k: 50 with 6 classes once became top-6 and reported 1.0."""
    labels, probabilities = known
    for k in (4, 10):
        figures = summary_metrics(labels, probabilities, top_k=k)
        assert figures["top_k"] == k and figures["top_k_accuracy"] is None
    assert summary_metrics(labels, probabilities, top_k=3)["top_k_accuracy"] is not None


def test_per_class_and_report_agree_with_scikit_learn(known):
    labels, probabilities = known
    predicted = probabilities.argmax(1)
    per_class = per_class_metrics(labels, predicted, CLASSES)
    f1 = sk.f1_score(labels, predicted, average=None)
    assert [per_class[name]["f1"] for name in CLASSES] == pytest.approx(list(f1))
    assert sum(row["support"] for row in per_class.values()) == 60
    text, as_dict = classification_report(labels, predicted, CLASSES)
    assert "owl" in text and as_dict["dog"]["f1-score"] == pytest.approx(per_class["dog"]["f1"])


@pytest.mark.parametrize("case", range(40))
def test_every_figure_equals_scikit_learns_with_absent_and_never_predicted_classes(case):
    """The figures are computed from the confusion counts (scikit-learn's import is a second of evaluate's start):
    the same floats as scikit-learn's zero_division=0 ones, and the same report, on random predictions where some
    class has no image and some class is never predicted."""
    rng = np.random.default_rng(case)
    count, images = int(rng.integers(2, 9)), int(rng.integers(1, 40))
    labels = rng.integers(0, count, images)
    if case % 2:
        labels[labels == count - 1] = 0  # the last class has no image
    predicted = np.where(rng.random(images) < 0.6, labels, rng.integers(0, count, images))
    if case % 3 == 0:
        predicted[predicted == 1] = 0  # nothing is predicted as class 1
    names = [f"class{'x' * int(rng.integers(0, 14))}{index}" for index in range(count)]
    every = list(range(count))

    assert (confusion_counts(labels, predicted, count) == sk.confusion_matrix(labels, predicted, labels=every)).all()
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, predicted, labels=every,
                                                                        zero_division=0)
    per_class = per_class_metrics(labels, predicted, names)
    assert [list(row.values()) for row in per_class.values()] == [
        list(row) for row in zip(precision, recall, f1, support, strict=True)]
    probabilities = rng.dirichlet(np.ones(count), images)
    probabilities[np.arange(images), predicted] += 1.0  # the predicted class on top, as argmax gives it
    figures = summary_metrics(labels, probabilities / probabilities.sum(1, keepdims=True), top_k=1)
    macro = sk.precision_recall_fscore_support(labels, predicted, labels=every, average="macro", zero_division=0)
    assert (figures["macro_precision"], figures["macro_recall"], figures["macro_f1"]) == macro[:3]

    text, as_dict = classification_report(labels, predicted, names)
    kwargs = dict(labels=every, target_names=names, zero_division=0, digits=4)
    assert as_dict == sk.classification_report(labels, predicted, output_dict=True, **kwargs)
    theirs = sk.classification_report(labels, predicted, **kwargs)
    # Where no prediction is right, scikit-learn prints its supports as floats
    # (``3.0``); the report keeps them whole, in the same column.
    theirs = re.sub(r"(\d+)\.0\n", lambda found: found[1].rjust(len(found[0]) - 1) + "\n", theirs)
    assert text == theirs


def test_scoring_and_drawing_a_split_never_imports_scikit_learn(tmp_path):
    script = f"""
import sys
import numpy as np
from pathlib import Path
from transfer.report.figures import plot_confusion_matrix, plot_per_class
from transfer.report.metrics import classification_report, per_class_metrics, summary_metrics
labels, probabilities = np.array([0, 1, 2, 2]), np.eye(3)[[0, 2, 2, 1]]
summary_metrics(labels, probabilities, 2)
classification_report(labels, probabilities.argmax(1), ["a", "b", "c"])
plot_per_class(per_class_metrics(labels, probabilities.argmax(1), ["a", "b", "c"]), Path({str(tmp_path)!r}) / "p.png")
plot_confusion_matrix(labels, probabilities.argmax(1), ["a", "b", "c"], Path({str(tmp_path)!r}) / "c.png")
print(sorted(name for name in sys.modules if name.split(".")[0] == "sklearn"))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_confusion_records_and_predictions_use_class_names(known, tmp_path):
    labels, probabilities = known
    predicted = probabilities.argmax(1)
    records = confusion_records(labels, predicted, CLASSES)
    assert records[0] == {"actual": CLASSES[labels[0]], "predicted": CLASSES[predicted[0]]}
    header, rows = prediction_rows([f"x/{i}.jpg" for i in range(60)], labels, probabilities, CLASSES)
    write_csv(tmp_path / "p.csv", header, rows)
    table = read_csv(tmp_path / "p.csv")
    assert list(table[0]) == ["path", "label", "predicted", "confidence", *CLASSES]
    assert table[5]["predicted"] == CLASSES[predicted[5]]
    assert float(table[5]["confidence"]) == pytest.approx(probabilities[5].max(), abs=1e-6)


def test_figures_are_written_as_png(known, tmp_path):
    labels, probabilities = known
    plot_confusion_matrix(labels, probabilities.argmax(1), CLASSES, tmp_path / "confusion.png")
    rows = [{"epoch": e, "loss": 1 / e, "accuracy": e / 10, "val_loss": 1.1 / e, "val_accuracy": e / 11}
            for e in (1, 2, 3)]
    plot_history(rows, tmp_path / "curves.png", "Head")
    plot_history([], tmp_path / "empty.png", "Fine-tune")
    plot_per_class(per_class_metrics(labels, probabilities.argmax(1), CLASSES), tmp_path / "per_class.png")
    for name in ("confusion.png", "curves.png", "empty.png", "per_class.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_names_the_font_cannot_draw_are_spelled_out_not_boxes(known, tmp_path):
    import warnings

    assert drawable("daisy") == "daisy" and drawable("Löwenzahn") == "Löwenzahn"
    assert drawable("\N{ROSE} rose") == "<ROSE> rose"
    assert drawable("\N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}") == "<THUMBS UP SIGN>"
    labels, probabilities = known
    emoji = ["\N{ROSE} rose", "\N{SUNFLOWER}", "\N{TULIP} tulip", "\N{BLOSSOM}"]
    assert len(emoji) == len(CLASSES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix(labels, probabilities.argmax(1), emoji, tmp_path / "confusion.png")
        plot_per_class(per_class_metrics(labels, probabilities.argmax(1), emoji), tmp_path / "per_class.png")
    assert not [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_the_mistakes_gallery_shows_the_surest_wrong_predictions_first(tmp_path):
    from PIL import Image

    labels = np.array([0, 1, 2, 3, 0])
    probabilities = np.array([[0.1, 0.9, 0, 0], [0, 1.0, 0, 0], [0.6, 0, 0.4, 0], [0, 0, 0, 1.0], [0.2, 0.7, 0.1, 0]])
    assert list(confident_mistakes(labels, probabilities, count=2)) == [0, 4]
    assert list(confident_mistakes(labels, probabilities, count=10)) == [0, 4, 2]
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(paths[-1])
    plot_confident_mistakes(paths, labels, probabilities, CLASSES, tmp_path / "mistakes.png", count=2)
    plot_confident_mistakes(paths[1:2], labels[1:2], probabilities[1:2], CLASSES, tmp_path / "none.png")
    for name in ("mistakes.png", "none.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
