"""Calibration figures against values worked out by hand."""

import numpy as np
import pytest

from transfer.model.calibration import (
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_bins,
    scale,
)


def test_ece_equals_the_hand_computed_value():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0, 0])
    # Two bins, (0, 0.5] and (0.5, 1]: every confidence (0.9, 0.8, 0.7, 0.55, 0.6) is in the upper one:
    # mean confidence 0.71, accuracy 3/5 = 0.6, so ECE = |0.6 - 0.71| = 0.11.
    assert expected_calibration_error(probabilities, labels, bins=2) == pytest.approx(0.11)
    # Ten bins: (0.5,0.6]: 0.55 wrong, 0.6 right; (0.6,0.7]: 0.7 right; (0.7,0.8]: 0.8 wrong; (0.8,0.9]: 0.9 right.
    expected = (2 * abs(0.5 - 0.575) + abs(1 - 0.7) + abs(0 - 0.8) + abs(1 - 0.9)) / 5
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(expected)
    rows = reliability_bins(probabilities, labels, bins=10)
    assert [row["count"] for row in rows] == [0, 0, 0, 0, 0, 2, 1, 1, 1, 0]
    assert rows[5]["low"] == pytest.approx(0.5) and rows[5]["accuracy"] == 0.5


def test_a_perfectly_calibrated_set_has_zero_ece():
    probabilities = np.array([[1.0, 0.0]] * 4 + [[0.25, 0.75]] * 4)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)


def test_temperature_scaling_recovers_the_temperature_that_made_the_data():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    true_probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in true_probabilities])
    overconfident = scale(true_probabilities, 0.5)  # what the model says: twice as sharp as the truth
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    assert expected_calibration_error(scale(overconfident, temperature), labels) < 0.3 * expected_calibration_error(
        overconfident, labels)
    assert (scale(overconfident, temperature).argmax(axis=1) == overconfident.argmax(axis=1)).all(), \
        "a temperature never changes a prediction"
    np.testing.assert_allclose(scale(true_probabilities, 1.0), true_probabilities, atol=1e-6)


def test_the_reliability_diagram_is_written(tmp_path):
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    plot_reliability({"as trained": (probabilities, labels)}, tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
