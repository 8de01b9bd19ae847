"""evaluate: score the deployable model on the held-out test split and write every report.

Reads params: evaluate.* (the whole params.yaml is logged to MLflow as the record of the execution, but
only these shape evaluate's outputs).
Reads: reports/data_quality/near_duplicates.csv: the test accuracy is also given without the test images that
have a near-duplicate in train or val (a leak), as ``accuracy_without_leaked``.
Writes: reports/metrics.json, reports/evaluate/ (per-class figures, classification report, confusion
records, confusion matrix PNG, predictions CSV, calibration and reliability diagram, Grad-CAM figure when
asked), reports/tracking.json (the MLflow run logged)
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.warm import hand_over

hand_over(__name__, __file__)  # into a fork of the warm server that has TensorFlow imported, when one can serve

from transfer.data.quality import accuracy_without
from transfer.data.quality_report import leaked_test_files
from transfer.data.splits import read_classes, read_split
from transfer.errors import DataError
from transfer.io import write_csv, write_json, write_text
from transfer.layout import (
    DATA_QUALITY_REPORTS,
    EVALUATE_REPORTS,
    MODEL,
    NEAR_DUPLICATES,
    RAW,
    SPLITS,
    TEST_METRICS,
    TRACKING_RECORD,
)
from transfer.model.calibration import (
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_bins,
    scale,
)
from transfer.model.classifier import input_size, load_model
from transfer.params import Params
from transfer.report.explain import gradcam_sample
from transfer.report.figures import plot_confident_mistakes, plot_confusion_matrix, plot_per_class
from transfer.report.metrics import (
    classification_report,
    confusion_records,
    per_class_metrics,
    prediction_rows,
    summary_metrics,
)
from transfer.report.record import collect_execution
from transfer.report.tracking import log_execution, open_store_early, run_recorded, tracking_uri
from transfer.schema import EvaluateParams, read_evaluate
from transfer.serve.predict import class_probabilities
from transfer.stage import run_stage

log = logging.getLogger("evaluate")


def parse_params(params: Params) -> EvaluateParams:
    return read_evaluate(params)


def calibrate(model, classes: list[str], labels, probabilities, settings: EvaluateParams) -> dict[str, float]:
    """ECE and a reliability diagram of the test predictions; with temperature scaling, also after it."""
    figures = {"ece": expected_calibration_error(probabilities, labels)}
    curves = {"as trained": (probabilities, labels)}
    record = {"as_trained": reliability_bins(probabilities, labels)}
    if settings.temperature_scaling:
        val_paths, val_labels = read_split(SPLITS, "val", RAW, classes)
        if not val_paths:
            raise DataError("evaluate.temperature_scaling needs a validation split, and split.val is 0")
        temperature = fit_temperature(class_probabilities(model, val_paths, settings.batch_size, settings.tta),
                                      val_labels)
        scaled = scale(probabilities, temperature)
        figures.update(temperature=temperature, ece_temperature_scaled=expected_calibration_error(scaled, labels),
                       loss_temperature_scaled=summary_metrics(labels, scaled, settings.top_k)["loss"])
        curves[f"temperature {temperature:.2f}"] = (scaled, labels)
        record["temperature_scaled"] = reliability_bins(scaled, labels)
        log.info("evaluate: ECE %.4f, %.4f after temperature scaling (T = %.3f, fitted on val)", figures["ece"],
                 figures["ece_temperature_scaled"], temperature)
    write_json(EVALUATE_REPORTS / "calibration.json", {**figures, "bins": record})
    plot_reliability(curves, EVALUATE_REPORTS / "reliability.png")
    return figures


def main() -> None:
    settings = parse_params(Params.load())
    model, classes = load_model(MODEL)
    if classes != read_classes(SPLITS):
        raise DataError(f"{MODEL} was trained on other classes than {SPLITS}; re-run the pipeline")
    paths, labels = read_split(SPLITS, "test", RAW, classes)
    if not paths:
        raise DataError("the test split is empty (split.test is 0); there is nothing to evaluate")
    open_store_early()  # MLflow's import and store, while the photos go through the model
    # One pass in file order: the labels come from the same CSV, so they cannot fall out of step.
    probabilities = class_probabilities(model, paths, settings.batch_size, settings.tta)
    predicted = probabilities.argmax(axis=1)

    metrics = summary_metrics(labels, probabilities, settings.top_k)
    metrics.update(calibrate(model, classes, labels, probabilities, settings))
    relative = [Path(path).relative_to(RAW).as_posix() for path in paths]
    leaked = leaked_test_files(DATA_QUALITY_REPORTS / NEAR_DUPLICATES)
    # None where nothing was checked (quality.report: false), never a count of 0 that reads as "no leak".
    checked = leaked is not None
    positions = [index for index, name in enumerate(relative) if name in (leaked or ())]
    metrics["leaked_test_images"] = len(positions) if checked else None
    metrics["accuracy_without_leaked"] = accuracy_without(labels, predicted, positions) if checked else None
    write_json(TEST_METRICS, metrics)
    per_class = per_class_metrics(labels, predicted, classes)
    write_json(EVALUATE_REPORTS / "per_class.json", per_class)
    plot_per_class(per_class, EVALUATE_REPORTS / "per_class.png")
    text, as_dict = classification_report(labels, predicted, classes)
    write_text(EVALUATE_REPORTS / "classification_report.txt", text)
    write_json(EVALUATE_REPORTS / "classification_report.json", as_dict)
    write_json(EVALUATE_REPORTS / "confusion.json", confusion_records(labels, predicted, classes))
    plot_confusion_matrix(labels, predicted, classes, EVALUATE_REPORTS / "confusion_matrix.png")
    plot_confident_mistakes(paths, labels, probabilities, classes, EVALUATE_REPORTS / "confident_mistakes.png")
    if settings.gradcam:
        shown = gradcam_sample(model, paths, labels, probabilities, classes, settings.gradcam,
                               EVALUATE_REPORTS / "gradcam.png")
        write_json(EVALUATE_REPORTS / "gradcam.json", shown)
    write_csv(EVALUATE_REPORTS / "predictions.csv", *prediction_rows(relative, labels, probabilities, classes))
    top_k = (f"top-{metrics['top_k']} {metrics['top_k_accuracy']:.4f}" if metrics["top_k_accuracy"] is not None else
             f"top-{metrics['top_k']} not reported (evaluate.top_k is not below the {len(classes)} classes, so it "
             "would be 1.0 whatever the model does)")
    log.info("evaluate: test accuracy %.4f, %s, macro F1 %.4f on %d images%s", metrics["accuracy"],
             top_k, metrics["macro_f1"], len(paths),
             f"; {len(positions)} leaked (a near-duplicate in train or val): {metrics['accuracy_without_leaked']:.4f} "
             "without them" if positions and metrics["accuracy_without_leaked"] is not None else "")

    # The whole execution becomes one MLflow run, gathered from the files every stage left.
    run_id = log_execution(collect_execution(model, input_size(model), MODEL))
    write_json(TRACKING_RECORD, {"run_id": run_id, "tracking_uri": tracking_uri() if run_id else None})
    run_recorded()


if __name__ == "__main__":
    run_stage("evaluate", main)
