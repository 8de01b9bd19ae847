"""MLflow tracking: one run per pipeline execution, logged by evaluate from :mod:`transfer.report.record`.

The evaluate stage logs the run at the end of every execution that reaches it. Evaluate itself declares a
``cache: false`` output, which turns DVC's run-cache off for it, so it always runs and always logs.

Store: ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.db`` (SQLite) at the repository root, found through
``DVC_ROOT`` so that queued experiments, which run in temporary copies, log into the workspace's store.
Tracking never loses results: any failure is a warning, and the stage's files stay the record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from transfer.io import read_json, write_json
from transfer.layout import (
    MODEL,
)
from transfer.model.classifier import classes_path
from transfer.model.distribute import is_chief
from transfer.params import repository_root
from transfer.report.record import content_digest

log = logging.getLogger(__name__)

EXPERIMENT = "transfer"
STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
CONTENT_TAG = "transfer.content"  # content_digest of what the run holds
# The run this workspace's evaluate is logging, until evaluate has recorded it in reports/tracking.json; beside
# DVC's own scratch files, in the working copy (a queued experiment's copy has its own).
PENDING_RUN = Path(".dvc/tmp/transfer_pending_run.json")
LOGGER_TAG = "transfer.logged_by"  # host:pid of the process logging the run, to tell abandoned runs apart
LOCK_RETRIES = 5  # SQLite allows one writer: queued experiments running side by side take turns.


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root().resolve() / STORE_FILE}"


def _log(mlflow, run_name: str, record: dict[str, Any]) -> str:
    import numpy as np

    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        # A local store keeps its artifacts beside it at the repository root, not in the working directory,
        # which for a queued experiment is a temporary copy that DVC deletes afterwards.
        local = mlflow.get_tracking_uri().startswith(("sqlite:", "file:")) or "://" not in mlflow.get_tracking_uri()
        location = (repository_root().resolve() / ARTIFACTS_FOLDER).as_uri() if local else None
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=location)
        except Exception:
            # Two queued experiments logging their first run at once: the other one created it first.
            if mlflow.get_experiment_by_name(EXPERIMENT) is None:
                raise
    mlflow.set_experiment(EXPERIMENT)
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    _remove_abandoned_runs(client, experiment_id)
    content = content_digest(record)
    earlier = _unrecorded_run(client, content)
    if earlier is not None:
        return earlier
    # Started back when the execution's first stage began, so the run's duration is the execution's, not
    # the second that logging it takes.
    started = time.time() - record.get("duration_seconds", 0.0)
    created = client.create_run(experiment_id, start_time=int(started * 1000),
                                tags={**record["tags"], LOGGER_TAG: _this_logger(), CONTENT_TAG: content},
                                run_name=run_name)
    if PENDING_RUN.parent.parent.is_dir():  # a DVC repository's .dvc
        PENDING_RUN.parent.mkdir(exist_ok=True)
        write_json(PENDING_RUN, {"run_id": created.info.run_id})
    with mlflow.start_run(run_id=created.info.run_id) as run:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH  # 6,000 characters in MLflow 3

        mlflow.log_params({key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in record["params"].items()})
        if record.get("params_tree") is not None:
            # MLflow params are text; this keeps each value's type (2e-05 a number, true a boolean).
            mlflow.log_dict(record["params_tree"], "params.json")
        metrics = {key: float(value) for key, value in record["metrics"].items() if isinstance(value, (int, float))}
        mlflow.log_metrics(metrics)
        # Every epoch of every history in one call, which MLflow splits into batches of the size its store takes.
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        steps = [Metric(f"{prefix}_epoch_{key}", float(value), now, int(row["epoch"]))
                 for prefix, rows in record["histories"].items() for row in rows
                 for key, value in row.items() if key != "epoch" and value not in (None, "")]
        client.log_batch(run.info.run_id, metrics=steps)
        for path in record["artifacts"]:
            if Path(path).is_file():
                mlflow.log_artifact(str(path), artifact_path=Path(path).parent.as_posix())
        model = record.get("model")
        if model is not None:
            import keras
            import tensorflow as tf
            from mlflow.models import infer_signature

            # MLflow saves the model in a temporary folder first; TensorFlow's "Assets written to: /tmp/..."
            # would name that folder, which is gone by the time anyone reads it.
            logging.getLogger("tensorflow").setLevel(logging.WARNING)
            # The signature from the shapes: predicting on an example would trace the model once more (seconds).
            example = np.zeros((1, *record["model_input_size"], 3), dtype="float32")
            signature = infer_signature(example, np.zeros((1, int(model.output_shape[-1])), dtype="float32"))
            with _saved_as(model, record.get("model_path")):
                mlflow.tensorflow.log_model(
                    model,
                    name="model",
                    signature=signature,
                    # Stated, not inferred: inference reloads the model in a subprocess, which costs minutes.
                    pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
                )
            _log_photo_model(record)
        return run.info.run_id


@contextlib.contextmanager
def _saved_as(model, path: str | Path | None):
    """While MLflow logs ``model``, saving it copies ``path``, the file it was loaded from, instead of writing it
    anew (about a second on MobileNetV2, more on larger backbones): the run's Keras model is then the very file
    that DVC tracks, byte for byte. Without a file (a model built in memory), MLflow saves it as usual."""
    if path is None or not Path(path).is_file():
        yield
        return

    def copy(target, *args, **kwargs) -> None:
        shutil.copyfile(path, target)

    model.save = copy  # this instance only; MLflow's Keras flavour calls model.save(path)
    try:
        yield
    finally:
        del model.save


def _unrecorded_run(client, content: str) -> str | None:
    """The run an earlier evaluate of this workspace logged and was stopped (kill -9) before DVC recorded it,
    when it holds this very execution: its id, to be recorded now instead of logging a copy. Such a run that
    holds another execution is deleted, since no ``dvc.lock`` will ever name it (``mlflow runs restore`` brings
    it back)."""
    if not PENDING_RUN.is_file():
        return None
    pending = read_json(PENDING_RUN).get("run_id")
    PENDING_RUN.unlink()
    try:
        run = client.get_run(pending)
    except Exception:  # noqa: BLE001 - deleted or never created: nothing to reuse
        return None
    if run.info.lifecycle_stage != "active":
        return None
    if run.info.status == "FINISHED" and run.data.tags.get(CONTENT_TAG) == content:
        log.info("mlflow: run %s already holds this execution (an earlier evaluate logged it and was stopped "
                 "before DVC recorded it); not logged again", pending)
        return pending
    if run.info.status == "RUNNING":
        client.set_terminated(pending, status="KILLED")
    client.delete_run(pending)
    log.info("mlflow: removed run %s, logged by an evaluate that was stopped before DVC recorded it", pending)
    return None


def run_recorded() -> None:
    """Evaluate has written the run's id into its record (``reports/tracking.json``): the run is no longer one
    that a stopped evaluate could leave unrecorded."""
    PENDING_RUN.unlink(missing_ok=True)


def _this_logger() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _remove_abandoned_runs(client, experiment_id: str) -> None:
    """Runs left RUNNING by an evaluate killed while logging (kill -9, a power cut) on this host: their logging
    process is gone, so they will never finish. DVC runs evaluate again, which logs the execution whole; the
    half-logged run is marked KILLED and deleted (``mlflow runs restore`` brings it back). Runs being logged
    right now by other processes (queued experiments) are left alone.
    """
    import psutil

    host = socket.gethostname()
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        logger = run.data.tags.get(LOGGER_TAG, "")
        where, _, pid = logger.rpartition(":")
        if where == host and pid.isdigit() and not psutil.pid_exists(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            client.delete_run(run.info.run_id)
            log.info("mlflow: removed run %s, left half-logged by a killed evaluate", run.info.run_id)


def _log_photo_model(record: dict[str, Any]) -> None:
    """The photo-serving model (:mod:`transfer.serve.serving`) beside the Keras one; a failure is a warning only."""
    path = Path(record.get("model_path") or MODEL)
    try:
        from transfer.serve.serving import log_photo_model

        log_photo_model(path, read_json(classes_path(path)))
    except Exception as error:  # noqa: BLE001 - the run and its Keras model stand without it
        log.warning("WARNING: the photo-serving model was not logged (%s); the Keras model was",
                    str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


@contextlib.contextmanager
def _one_writer(uri: str):
    """For a local SQLite store, hold its lock file (``mlflow.db.lock``) while logging; else nothing.

    Experiments run side by side (``dvc queue start -j N``) finish at once. SQLite lets one of them write at a
    time, and MLflow's first connection to a new file creates its tables in a migration that breaks the store
    for good when two processes run it together. Holding a lock for the few seconds a run takes to log
    avoids both; an MLflow server needs none, since it is the only writer of its store.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the retries on a locked store are what is left
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return

    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_opening: threading.Thread | None = None  # see open_store_early


def open_store_early() -> None:
    """Import MLflow and open the local tracking store in a background thread, never raising.

    Importing MLflow, opening its SQLite store and building its map of installed packages (which logging a
    model reads) take about 3 s of Python; started while the stage's TensorFlow work runs (which releases the
    interpreter lock), they overlap it instead of following it.
    :func:`log_execution` waits for the thread, and the store it opened is MLflow's own cached one. Only the
    local default store: a server is left to :func:`log_execution`, whose time-outs and warning cover it.
    """
    global _opening
    uri = tracking_uri()
    if not uri.startswith("sqlite:") or not is_chief():
        return

    def open_store() -> None:
        try:
            import mlflow

            with _one_writer(uri):  # the store's tables may be created here: one process at a time
                mlflow.MlflowClient(uri).search_experiments(max_results=1)
            # Logging a model checks its stated requirements against the installed packages, from a map of every
            # installed package's modules that MLflow builds once per process (a third of a second): built now.
            from mlflow.utils.requirements_utils import _init_modules_to_packages_map

            _init_modules_to_packages_map()
        except Exception:  # noqa: BLE001 - only a head start: log_execution opens the store itself and warns
            pass

    _opening = threading.Thread(target=open_store, name="mlflow-open-store", daemon=True)
    _opening.start()


def log_execution(record: dict[str, Any]) -> str | None:
    """Log one pipeline execution as one MLflow run, named after its DVC experiment; never raises.

    Args:
        record: ``params`` (flat), ``metrics`` (flat), ``histories`` ({prefix: per-epoch rows}), ``tags``,
            ``artifacts`` (file paths), and optionally ``model`` with ``model_input_size`` (height, width) and
            ``model_path``, the saved file it was loaded from (logged as it is; else MLflow saves the model).

    Returns:
        The run id, or None when tracking failed (a warning says why).
    """
    if not is_chief():
        log.info("mlflow: this host is not the chief of its TF_CONFIG cluster; the chief logs this execution")
        return None
    if _opening is not None:
        _opening.join(timeout=120)
    # Fail fast on an unreachable server instead of retrying for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars for local files, in a log
    uri = tracking_uri()
    try:
        import mlflow

        mlflow.set_tracking_uri(uri)
        with _one_writer(uri):
            for attempt in range(1, LOCK_RETRIES + 1):
                try:
                    run_id = _log(mlflow, record["tags"].get("dvc_exp_name", "workspace"), record)
                    log.info("mlflow: logged run %s to %s", run_id, uri)
                    return run_id
                except Exception as error:  # noqa: BLE001 - only a locked SQLite store is worth another try
                    if "locked" not in str(error).lower() or attempt == LOCK_RETRIES:
                        raise
                    time.sleep(attempt)
    except Exception as error:  # noqa: BLE001 - tracking must never fail the stage
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("WARNING: MLflow tracking to %s failed (%s); the stage's output files are the record", uri,
                    first_line)
    return None
