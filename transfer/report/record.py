"""What one MLflow run holds, assembled from the files the stages leave behind: the params, every stage's
figures and histories, the tags that place the execution, its timings, and the digest of its content.

Because everything is read from the stages' output files (params, histories, timings, figures, the model), a
stage that DVC restored from its run-cache instead of running still contributes its record, all but its
seconds (which belong to the execution that ran it; :func:`timing_metrics`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from transfer.io import read_csv, read_json
from transfer.layout import (
    DATA_QUALITY_REPORTS,
    DATA_REPORT,
    EVALUATE_REPORTS,
    FINE_TUNE_REPORTS,
    HEAD_REPORTS,
    HISTORY,
    STAGE_METRICS,
    TEST_METRICS,
    TIMINGS,
)
from transfer.params import PARAMS_FILE, flatten, read_params_file, repository_root
from transfer.process import execution_id, stage_elapsed


def _git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def run_tags(params: dict[str, Any]) -> dict[str, str]:
    """Tags that identify an execution: DVC experiment, baseline, commit, backbone and dataset."""
    tags = {
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "git_commit": _git_commit(repository_root()) or "",
        "backbone": str(params.get("backbone", "")),
        "dataset": Path(str(params.get("data", {}).get("source", ""))).name,
    }
    return {key: value for key, value in tags.items() if value}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def timing_metrics(folder: Path, current: str | None, evaluating: float) -> tuple[dict[str, float], float]:
    """The timing figures (``<stage>_seconds``, ``extract_features_images_per_second``...) of the stages this
    execution ran, and the seconds they took, from their records in ``folder`` (reports/timings).

    A stage DVC found up to date or restored from its run-cache did not run: its record is an earlier
    execution's, and its seconds are left out, so that the run's figures add up to what it took. Evaluate, which
    is running, counts ``evaluating`` seconds so far. Outside DVC (``current`` None) every record counts.
    """
    metrics: dict[str, float] = {}
    ran = 0.0
    for timing in sorted(folder.glob("*.json")):
        figures = read_json(timing)
        if timing.stem == "evaluate" or (current is not None and figures.get("execution") != current):
            continue
        stage = timing.stem.replace("-", "_")
        metrics.update({f"{stage}_{key}": value for key, value in figures.items()
                        if key not in ("images", "execution") and isinstance(value, (int, float))})
        ran += figures.get("seconds", 0.0)
    metrics["evaluate_seconds"] = round(evaluating, 2)
    return metrics, ran


def collect_execution(model=None, model_input_size: tuple[int, int] | None = None,
                      model_path: Path | None = None) -> dict[str, Any]:
    """Everything one execution left in its files, as the record :func:`log_execution` logs.

    Test metrics go in as they are; each training stage's final validation figures as ``head_*`` and
    ``fine_tune_*``, and its per-epoch history as the step metrics ``head_epoch_*`` and ``fine_tune_epoch_*``;
    each stage's wall time as ``<stage>_seconds`` and extraction throughput as
    ``extract_features_images_per_second``. ``model_path``: the saved file ``model`` was loaded from, logged as
    it is.
    """
    # Read as the stages read it (YAML 1.2, DVC's reading), so the run shows the values the stages used.
    tree = read_params_file(PARAMS_FILE)
    metrics = dict(read_json(TEST_METRICS))
    for prefix, folder in (("head", HEAD_REPORTS), ("fine_tune", FINE_TUNE_REPORTS),
                           ("data_quality", DATA_QUALITY_REPORTS)):
        if (folder / STAGE_METRICS).is_file():
            metrics.update({f"{prefix}_{key}": value for key, value in read_json(folder / STAGE_METRICS).items()})
    timed, ran = timing_metrics(TIMINGS, execution_id(), stage_elapsed())
    metrics.update(timed)
    histories = {
        prefix: [{key: _number(value) for key, value in row.items()} for row in read_csv(folder / HISTORY)]
        for prefix, folder in (("head", HEAD_REPORTS), ("fine_tune", FINE_TUNE_REPORTS))
        if (folder / HISTORY).is_file()
    }
    artifacts = [TEST_METRICS, DATA_REPORT, *sorted(EVALUATE_REPORTS.glob("*")),
                 *sorted(HEAD_REPORTS.glob("*")), *sorted(FINE_TUNE_REPORTS.glob("*")),
                 *sorted(DATA_QUALITY_REPORTS.glob("*"))]
    return {
        "params": flatten(tree),
        "params_tree": tree,
        "metrics": metrics,
        "histories": histories,
        "tags": run_tags(tree),
        "artifacts": artifacts,
        "model": model,
        "model_input_size": model_input_size,
        "model_path": model_path,
        # The stages this execution ran (not those DVC found up to date or restored), evaluate so far included.
        "duration_seconds": ran + stage_elapsed(),
    }


def content_digest(record: dict[str, Any]) -> str:
    """What an execution logged, as a digest: its params, test and validation figures, histories and the tags
    that place it (commit, baseline, backbone, data set); not its wall times, which differ between two runs of
    the same work, nor its experiment's name, which DVC draws anew for each run."""
    import hashlib
    import json

    metrics = {key: value for key, value in record["metrics"].items()
               if not key.endswith(("_seconds", "_per_second"))}
    tags = {key: value for key, value in record["tags"].items() if key != "dvc_exp_name"}
    text = json.dumps({"params": record["params"], "metrics": metrics, "histories": record["histories"],
                       "tags": tags}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
