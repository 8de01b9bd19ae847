"""MLflow tracking against a real SQLite store: one complete run per execution, and never a lost result."""

import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO
from transfer.model.backbones import build_feature_extractor
from transfer.model.classifier import assemble_classifier
from transfer.model.heads import build_head
from transfer.model.registry import resolve
from transfer.params import flatten
from transfer.report import record, tracking
from transfer.schema import BackboneParams


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _record(tmp_path, model=None):
    figure = tmp_path / "reports" / "evaluate" / "confusion_matrix.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    return {
        "params": flatten({"backbone": "vgg16", "head": {"lr": 0.001, "hidden": [128]}}),
        "metrics": {"accuracy": 0.9, "top_k": 3, "fine_tune_val_loss": None},
        "histories": {"head": [{"epoch": 1.0, "loss": 0.9, "val_loss": 1.0},
                               {"epoch": 2.0, "loss": 0.5, "val_loss": None}]},
        "tags": {"backbone": "vgg16", "dvc_exp_name": "test-exp"},
        "artifacts": [figure.relative_to(tmp_path)],
        "model": model,
        "model_input_size": (32, 32),
    }


def test_the_default_store_is_sqlite_at_the_dvc_root(store):
    assert tracking.tracking_uri() == f"sqlite:///{store}/mlflow.db"


def test_flatten_gives_dotted_keys():
    assert flatten({"a": 1, "b": {"c": {"d": [2]}}}) == {"a": 1, "b.c.d": [2]}
    assert flatten({"a": {}, "b": {"c": 1}}) == {"a": {}, "b.c": 1}, "an empty mapping is a key too"


def test_a_run_carries_params_metrics_curves_artifacts_and_a_loadable_model(store, monkeypatch):
    import mlflow

    monkeypatch.chdir(store)
    extractor = build_feature_extractor(resolve(BackboneParams("mobilenetv2_0.35", "none", (32, 32))))
    model = assemble_classifier(extractor, build_head(1280, 3, [], 0.0, False))
    run_id = tracking.log_execution(_record(store, model))
    assert run_id
    client = mlflow.MlflowClient(tracking.tracking_uri())
    run = client.get_run(run_id)
    assert run.data.params["head.lr"] == "0.001" and run.data.params["head.hidden"] == "[128]"
    assert run.data.metrics["accuracy"] == 0.9 and "fine_tune_val_loss" not in run.data.metrics
    assert run.data.tags["dvc_exp_name"] == "test-exp" and run.info.run_name == "test-exp"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "head_epoch_loss")] == [(1, 0.9), (2, 0.5)]
    assert [a.path for a in client.list_artifacts(run_id, "reports/evaluate")] == [
        "reports/evaluate/confusion_matrix.png"
    ]
    assert (store / "mlartifacts").is_dir(), "artifacts live beside the store, at the repository root"
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.predict(images)), np.asarray(model(images)), rtol=1e-5, atol=1e-6)
    second = tracking.log_execution(_record(store / "again"))
    assert len(client.search_runs([run.info.experiment_id])) == 2 and second != run_id


def test_a_model_loaded_from_a_file_is_logged_as_that_file_byte_for_byte(store, monkeypatch):
    """Evaluate's model comes from models/model.keras: the run holds that very file (the one DVC tracks), copied,
    not saved a second time, and it still loads and scores as the model does."""
    import hashlib

    import mlflow

    from transfer.model.classifier import load_model, save_model

    monkeypatch.chdir(store)
    extractor = build_feature_extractor(resolve(BackboneParams("mobilenetv2_0.35", "none", (32, 32))))
    saved = store / "models" / "model.keras"
    save_model(assemble_classifier(extractor, build_head(1280, 3, [], 0.0, False)), saved, ["a", "b", "c"])
    model, _ = load_model(saved)
    run_id = tracking.log_execution({**_record(store, model), "model_path": saved})
    assert run_id
    assert "save" not in vars(model), "the model's own save is back once the run is logged"
    logged = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", tracking_uri=tracking.tracking_uri(),
                                                      dst_path=str(store / "download")))
    files = list(logged.rglob("*.keras"))
    assert len(files) == 1
    assert hashlib.sha256(files[0].read_bytes()).digest() == hashlib.sha256(saved.read_bytes()).digest()
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.predict(images)), np.asarray(model(images)), rtol=1e-5, atol=1e-6)


def test_an_unreachable_server_is_a_warning_not_a_failure(store, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.perf_counter()
    assert tracking.log_execution(_record(store)) is None
    assert time.perf_counter() - start < 60
    assert "MLflow tracking to http://127.0.0.1:9 failed" in caplog.text
    assert "output files are the record" in caplog.text


CONCURRENT_LOGGER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import mlflow  # imported before the start line, so that all of them reach the store together
from transfer.report import tracking
start = float(sys.argv[3])
while time.time() < start:
    time.sleep(0.005)
record = {"params": {"head.lr": sys.argv[2]}, "metrics": {"accuracy": 0.5},
          "histories": {"head": [{"epoch": 1.0, "loss": 0.9}]}, "tags": {"dvc_exp_name": "exp-" + sys.argv[2]},
          "artifacts": [], "model": None}
print("RUN", tracking.log_execution(record))
"""


def test_experiments_logging_at_once_into_a_fresh_store_all_land(store):
    """What `dvc queue start -j 4` does on its first executions: four processes create and write one store."""
    import subprocess
    import sys
    from pathlib import Path

    import mlflow

    root = str(Path(tracking.__file__).resolve().parents[2])
    start = time.time() + 8
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_LOGGER, root, str(index), str(start)],
                                  cwd=store, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(4)]
    outputs = [process.communicate(timeout=300) for process in processes]
    run_ids = [line.split()[1] for stdout, _ in outputs for line in stdout.splitlines() if line.startswith("RUN ")]
    assert len(run_ids) == 4 and "None" not in run_ids, outputs
    client = mlflow.MlflowClient(tracking.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert sorted(run.data.params["head.lr"] for run in runs if run.info.status == "FINISHED") == ["0", "1", "2", "3"]


def test_a_run_left_running_by_a_killed_evaluate_is_removed_when_the_execution_is_logged_again(store, monkeypatch):
    """kill -9 while logging leaves a RUNNING run; logging the execution again removes it and logs one run."""
    import os
    import signal
    import subprocess
    import sys

    import mlflow

    monkeypatch.chdir(store)
    uri = tracking.tracking_uri()
    script = (
        "import sys, time, mlflow\n"
        "from transfer.report import tracking\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "experiment = mlflow.set_experiment(tracking.EXPERIMENT)\n"
        "run = mlflow.MlflowClient().create_run(experiment.experiment_id,\n"
        "                                       tags={tracking.LOGGER_TAG: tracking._this_logger()})\n"
        "print(run.info.run_id, flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, uri], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    abandoned = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(abandoned).info.status == "RUNNING"

    run_id = tracking.log_execution(_record(store))
    assert run_id and run_id != abandoned
    gone = client.get_run(abandoned)
    assert gone.info.status == "KILLED" and gone.info.lifecycle_stage == "deleted"
    alive = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert [run.info.run_id for run in alive] == [run_id] and alive[0].info.status == "FINISHED"


def test_a_store_opened_early_in_the_background_is_the_one_the_run_is_logged_to(store, monkeypatch):
    import mlflow

    monkeypatch.chdir(store)
    monkeypatch.setattr(tracking, "_opening", None)
    tracking.open_store_early()
    assert tracking._opening is not None, "the default store is local: opened in the background"
    run_id = tracking.log_execution(_record(store))
    assert run_id and not tracking._opening.is_alive()
    assert mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id).data.metrics["accuracy"] == 0.9
    monkeypatch.setattr(tracking, "_opening", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    tracking.open_store_early()
    assert tracking._opening is None, "a server is left to log_execution, its time-outs and its warning"


def test_an_evaluate_stopped_after_logging_leaves_no_second_copy_of_its_run(store, monkeypatch):
    """kill -9 after evaluate logged its run and before it was recorded: DVC runs evaluate again, which finds
    the run it logged (the same content) and records that one instead of a duplicate. A run it left that
    holds other content is deleted, since no dvc.lock can name it; once recorded, a run is never touched."""
    import mlflow

    monkeypatch.chdir(store)
    (store / ".dvc").mkdir()
    first = tracking.log_execution(_record(store))
    assert tracking.PENDING_RUN.is_file(), "logged, not yet recorded"
    again = tracking.log_execution(_record(store / "again"))  # the re-run after the kill: same execution
    client = mlflow.MlflowClient(tracking.tracking_uri())
    experiment = client.get_run(first).info.experiment_id
    assert again == first and len(client.search_runs([experiment])) == 1
    tracking.run_recorded()
    assert not tracking.PENDING_RUN.exists()
    third = tracking.log_execution(_record(store / "third"))
    assert third != first and len(client.search_runs([experiment])) == 2, "a recorded run is not reused"
    changed = _record(store / "changed")
    changed["metrics"] = {**changed["metrics"], "accuracy": 0.5}
    fourth = tracking.log_execution(changed)  # third was never recorded and holds other content
    assert client.get_run(third).info.lifecycle_stage == "deleted"
    assert {run.info.run_id for run in client.search_runs([experiment])} == {first, fourth}


def test_only_the_stages_this_execution_ran_give_their_seconds(tmp_path):
    """Stages DVC found up to date or restored keep an earlier execution's timing record: left out."""
    from transfer.io import write_json

    write_json(tmp_path / "extract-features.json", {"seconds": 50.0, "images_per_second": 80.0, "images": 400,
                                                   "execution": "old"})
    write_json(tmp_path / "train-head.json", {"seconds": 3.5, "execution": "now"})
    write_json(tmp_path / "fine-tune.json", {"seconds": 20.0, "execution": "now"})
    write_json(tmp_path / "evaluate.json", {"seconds": 9.0, "execution": "old"})  # the last evaluate's
    metrics, ran = record.timing_metrics(tmp_path, "now", 4.25)
    assert metrics == {"train_head_seconds": 3.5, "fine_tune_seconds": 20.0, "evaluate_seconds": 4.25}
    assert ran == 23.5
    everything, total = record.timing_metrics(tmp_path, None, 1.0)  # outside DVC: no way to tell
    assert everything["extract_features_images_per_second"] == 80.0 and total == 73.5


def test_long_histories_and_long_params_are_logged_whole(store):
    """MLflow's log_batch splits 1,000-metric batches itself, and MLflow 3 keeps params of 6,000 characters."""
    import mlflow

    record = _record(store)
    record["histories"] = {"head": [{"epoch": float(epoch), "loss": 1.0 / epoch, "val_loss": 2.0 / epoch}
                                    for epoch in range(1, 801)]}  # 1,600 step metrics
    record["params"]["data.source"] = "s" * 3000
    run_id = tracking.log_execution(record)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    assert len(client.get_metric_history(run_id, "head_epoch_val_loss")) == 800
    assert client.get_run(run_id).data.params["data.source"] == "s" * 3000
