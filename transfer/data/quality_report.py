"""The data-quality report's files: the label-issue, near-duplicate and outlier CSVs, the summary in
``metrics.json``, the two galleries, and the exclusions a user draws from them into ``curation/exclude.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from transfer.data.catalog import Images
from transfer.data.duplicates import leaked
from transfer.data.quality import QualityReport
from transfer.data.splits import SPLITS
from transfer.errors import UserError
from transfer.io import atomic_path, from_spreadsheet_safe, read_csv, read_json, spreadsheet_safe, write_csv, write_json
from transfer.layout import LABEL_ISSUES, LABEL_ISSUES_FIGURE, NEAR_DUPLICATES, OUTLIERS, OUTLIERS_FIGURE, STAGE_METRICS


def leaked_test_files(near_duplicates: Path) -> set[str] | None:
    """The test images (paths relative to data/raw) that ``near_duplicates.csv`` pairs with an image of another
    split; None when the file does not exist (the report is off, ``quality.report: false``): not checked."""
    if not near_duplicates.is_file():
        return None
    return {from_spreadsheet_safe(row[f"file_{side}"]) for row in read_csv(near_duplicates) for side in "ab"
            if row[f"split_{side}"] == "test"}


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
            spreadsheet_safe(images.classes[images.labels[index]]))), round(similarity, 4),
            # Empty: not judged by the ratio (no spread to judge by), near because the two are one picture.
            "" if math.isnan(ratio) else round(ratio, 4), leak])
    return rows


def outlier_rows(images: Images, report: QualityReport) -> list[list[Any]]:
    predicted = report.probabilities.argmax(axis=1)
    return [[rank, spreadsheet_safe(images.files[index]), images.splits[index],
             spreadsheet_safe(images.classes[images.labels[index]]), round(float(report.scores[index]), 4),
             spreadsheet_safe(images.classes[predicted[index]])]
            for rank, index in enumerate(report.outliers, start=1)]


def summary(images: Images, report: QualityReport) -> dict[str, Any]:
    """The counts that go into ``dvc metrics`` and MLflow."""
    predicted = report.probabilities.argmax(axis=1)
    per_split = {split: int(np.sum(images.splits[report.suspects] == split)) for split in SPLITS}
    return {
        "images": len(images.files),
        "folds": report.folds,
        "out_of_fold_accuracy": round(float(np.mean(predicted == images.labels)), 4),
        "label_issues": len(report.suspects),
        "label_issues_train": per_split["train"],
        "label_issues_val": per_split["val"],
        "label_issues_test": per_split["test"],
        "duplicate_ratio": report.ratio,
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
    from transfer.plotting import plot_gallery

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
    from transfer.plotting import plot_gallery

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
