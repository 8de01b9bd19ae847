"""How far to trust a confidence: expected calibration error, reliability diagrams, temperature scaling.

A classifier is calibrated when, among the images it labels with 80% confidence, 80% are right. Fine-tuned
networks are usually over-confident; one temperature fitted on the validation split (Guo et al., 2017)
fixes most of it without changing a single prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALIBRATION_BINS = 15
_EPSILON = 1e-12


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per equal-width confidence bin over (0, 1]: its bounds, image count, mean confidence and accuracy.

    The confidence of a prediction is its top probability; a prediction at exactly a bin's upper bound
    belongs to that bin.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append({
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the confidence bins."""
    total = len(labels)
    if total == 0:
        return 0.0
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"])
                     for row in reliability_bins(probabilities, labels, bins) if row["count"]))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities recomputed at ``temperature`` (log-probabilities stand in for the logits)."""
    logits = np.log(np.clip(probabilities, _EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of ``labels``."""
    from scipy.optimize import minimize_scalar

    def nll(log_temperature: float) -> float:
        scaled = scale(probabilities, float(np.exp(log_temperature)))
        return float(-np.log(np.clip(scaled[np.arange(len(labels)), labels], _EPSILON, 1.0)).mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def plot_reliability(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = CALIBRATION_BINS
) -> None:
    """A reliability diagram: accuracy against confidence per bin, one line per set of probabilities.

    Args:
        curves: {name: (probabilities, labels)}, such as the raw and the temperature-scaled test predictions.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transfer.plotting import save_figure

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for name, (probabilities, labels) in curves.items():
        rows = [row for row in reliability_bins(probabilities, labels, bins) if row["count"]]
        ece = expected_calibration_error(probabilities, labels, bins)
        top.plot([row["confidence"] for row in rows], [row["accuracy"] for row in rows], marker="o",
                 label=f"{name} (ECE {ece:.3f})")
        bottom.bar([(row["low"] + row["high"]) / 2 for row in rows], [row["count"] for row in rows],
                   width=1 / bins, alpha=0.5, label=name)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title="Reliability diagram (test split)")
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="confidence (top probability)", ylabel="images")
    figure.tight_layout()
    save_figure(figure, path, tight=False)
