"""The real `dvc repro` and `dvc exp run` on generated images, in a temporary git repository."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    free_port,
    make_pipeline_repo,
    make_shapes_dataset,
    pipeline_env,
    run,
    stages_run,
    wait_for_http,
)
from transfer.io import read_csv
from transfer.params import read_params_file

# One pytest-xdist worker runs this whole module (tests/conftest.py, ONE_WORKER_MODULES): its module-scoped
# pipeline run is built once, not once per worker.
pytestmark = pytest.mark.slow

ALL_STAGES = ["download", "split", "extract-features", "train-head", "fine-tune", "evaluate"]
EVALUATE_FILES = ["per_class.json", "classification_report.txt", "classification_report.json", "confusion.json",
                  "confusion_matrix.png", "predictions.csv"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    source = make_shapes_dataset(base / "shapes", per_class=15, size=40)
    return make_pipeline_repo(base / "repo", {
        "data.source": str(source),
        # Randomly initialised MobileNets and EfficientNets give all-but-constant features; ResNet50's still
        # separate the shapes, so the test can check that the pipeline learns.
        "backbone": "resnet50",
        "weights": "none",
        "image_size": 32,
        "split.val": 0.2,
        "split.test": 0.2,
        "features.batch_size": 8,
        "head.epochs": 40,
        "head.batch_size": 8,
        "fine_tune.epochs": 1,
        "fine_tune.unfreeze": 5,
        "fine_tune.batch_size": 8,
    })


def _noise(result) -> list[str]:
    """Lines of a healthy run's output that look like errors, or name a folder that is gone."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("E0000", "W0000")) or "absl::InitializeLog" in line
            or "No file hash info" in line or "Assets written to" in line]


def _back_to_baseline(repo):
    """Undo what a workspace experiment left behind: params, lock file and outputs as committed."""
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)


@pytest.fixture(scope="module")
def first_run(repo):
    result = run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "first run"], repo)
    return result


def test_repro_runs_all_six_stages_and_writes_every_report(repo, first_run):
    assert stages_run(first_run) == ALL_STAGES
    assert _noise(first_run) == []
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for key in ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1"):
        assert 0 <= metrics[key] <= (1 if key != "loss" else 100), key
    assert metrics["top_k"] == 3 and metrics["top_k_accuracy"] is None, "top-3 of 3 classes says nothing"
    assert metrics["images"] == 9
    assert metrics["accuracy"] >= 0.6, "chance is 0.33: labels and predictions must line up end to end"
    for name in EVALUATE_FILES:
        assert (repo / "reports/evaluate" / name).stat().st_size > 0, name
    for path in ("models/model.keras", "models/head.keras", "reports/head/curves.png", "reports/data.json",
                 "reports/fine_tune/history.csv", "data/features/meta.json", "data/splits/classes.json"):
        assert (repo / path).stat().st_size > 0, path
    history = (repo / "reports/fine_tune/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3
    assert history[1].startswith("0,,,"), "epoch 0, the head on the backbone before any step: validation only"
    tuned = json.loads((repo / "reports/fine_tune/metrics.json").read_text())
    assert tuned["best_epoch"] in (0, 1) and tuned["epochs_run"] == 1
    head = json.loads((repo / "reports/head/metrics.json").read_text())
    assert 0 <= head["test_accuracy"] <= 1 and head["test_loss"] > 0, "the head alone on the cached test features"
    quality = json.loads((repo / "reports/data_quality/metrics.json").read_text())
    assert quality["images"] == 45 and quality["folds"] == 5
    assert quality["label_issues"] == sum(quality[f"label_issues_{split}"] for split in ("train", "val", "test"))
    extracted = json.loads((repo / "reports/timings/extract-features.json").read_text())
    assert extracted["data_quality_seconds"] > 0, "written by extract-features"
    for name in ("label_issues.csv", "near_duplicates.csv", "outliers.csv", "label_issues.png", "outliers.png"):
        assert (repo / "reports/data_quality" / name).stat().st_size > 0, name
    assert metrics["leaked_test_images"] == quality["leaked_test_images"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert "reports/data_quality/metrics.json" in json.dumps(shown), "the report's counts are DVC metrics"


def test_a_second_repro_runs_nothing(repo, first_run):
    assert stages_run(run(["dvc", "repro"], repo)) == []
    assert "nothing to commit" in run(["git", "status"], repo).stdout


def _outputs(repo: Path) -> dict[str, bytes]:
    """Every file of models/ and data/features/ (the trunk cache included), and the test metrics."""
    features = sorted(path for path in (repo / "data/features").rglob("*") if path.is_file())
    files = [*sorted((repo / "models").iterdir()), *features, repo / "reports/metrics.json"]
    return {path.relative_to(repo).as_posix(): path.read_bytes() for path in files}


def test_the_same_params_give_the_same_results(repo, first_run):
    """The first run's stages ran in forks of a warm server (transfer/warm.py, on in this suite as for users);
    this one runs each in its own process, importing TensorFlow itself: the same bytes either way."""
    assert os.environ.get("TRANSFER_WARM") != "0" and os.environ.get("TRANSFER_WARM_DIR")
    before = _outputs(repo)
    assert "models/model.keras" in before and "data/features/meta.json" in before
    assert "data/features/trunk/train.npy" in before, "the augmented copies of the trunk cache are drawn seeded"
    assert stages_run(run(["dvc", "repro", "--force"], repo, env={"TRANSFER_WARM": "0"})) == ALL_STAGES
    after = _outputs(repo)
    assert [name for name in before if after.get(name) != before[name]] == [], "byte for byte, models included"


def test_a_head_experiment_reuses_the_cached_features(repo, first_run):
    _back_to_baseline(repo)
    result = run(["dvc", "exp", "run", "-S", "head.lr=0.005"], repo)
    assert stages_run(result) == ["train-head", "fine-tune", "evaluate"]
    assert _noise(result) == []
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "0.005" in shown


# One process (one TensorFlow import) per look at the saved model: its score on the validation images, with
# the fine-tune's label smoothing, and the output layer's kernel of the head as train-head left it and of the
# saved model.
SAVED_MODEL = (
    "import json, sys\n"
    "from transfer.data.pipeline import image_dataset\n"
    "from transfer.data.splits import read_classes, read_split\n"
    "from transfer.layout import HEAD_MODEL, MODEL, RAW, SPLITS\n"
    "from transfer.model.classifier import load_model\n"
    "from transfer.model.scoring import score\n"
    "from transfer.model.training import compile_for_training\n"
    "from transfer.params import Params\n"
    "from transfer.schema import read_fine_tune\n"
    "model, classes = load_model(MODEL)\n"
    "paths, labels = read_split(SPLITS, 'val', RAW, classes)\n"
    "def output_kernel(net):\n"
    "    return [w for w in net.weights if w.path.endswith('kernel')][-1].numpy().tolist()\n"
    "kernels = {'head': output_kernel(load_model(HEAD_MODEL)[0]), 'model': output_kernel(model)}\n"
    "compile_for_training(model, 1e-3, read_fine_tune(Params.load()).training.label_smoothing)\n"
    "val = score(model, image_dataset(paths, (32, 32), 8, labels, len(classes)), 8)\n"
    "print(json.dumps({'val': val, 'kernels': kernels}))\n"
)


def _saved_model(repo) -> tuple[dict, dict]:
    """The saved model's validation score and the output kernels (see SAVED_MODEL)."""
    seen = json.loads(run(["python", "-c", SAVED_MODEL], repo).stdout.splitlines()[-1])
    return seen["val"], seen["kernels"]


def _history(repo) -> list[list[float | None]]:
    lines = (repo / "reports/fine_tune/history.csv").read_text().splitlines()[1:]
    return [[float(cell) if cell else None for cell in line.split(",")] for line in lines]


def test_a_cached_trunk_fine_tune_trains_as_the_image_path_and_saves_what_it_trained(repo, first_run):
    """fine_tune.trunk_cache: with no random change to the images (no cached copies, no flips), epochs from the
    trunk's cached output follow the epochs through the whole backbone, and the saved model scores on validation
    images as its kept epoch did on the cache (both with the fine-tune's label smoothing)."""
    _back_to_baseline(repo)
    same = ["-S", "fine_tune.epochs=3", "-S", "fine_tune.augment.flip=false", "-S", "fine_tune.augment.rotation=0",
            "-S", "fine_tune.augment.zoom=0", "-S", "fine_tune.augment.contrast=0", "-S", "fine_tune.patience=3",
            "-S", "fine_tune.lr=0.001", "-S", "features.trunk_views=0"]  # at this rate the third epoch beats the start
    # The first and the last run fine-tune alone (a stage as the target), since nothing here reads their evaluate.
    through = run(["dvc", "exp", "run", "fine-tune", "-S", "fine_tune.trunk_cache=false", *same], repo)
    through_images = _history(repo)
    result = run(["dvc", "exp", "run", "-S", "fine_tune.trunk_cache=true", *same], repo)
    from_cache = _history(repo)
    tuned = json.loads((repo / "reports/fine_tune/metrics.json").read_text())
    saved, kernels = _saved_model(repo)
    # fine_tune.blend: the same run, saved halfway between the head's start and the kept epoch.
    run(["dvc", "exp", "run", "fine-tune", "-S", "fine_tune.trunk_cache=true", "-S", "fine_tune.blend=0.5", *same],
        repo)
    halfway = json.loads((repo / "reports/fine_tune/metrics.json").read_text())
    halfway_saved, halfway_kernels = _saved_model(repo)
    _back_to_baseline(repo)
    assert "training through the whole backbone on the photos (fine_tune.trunk_cache is false)" in through.stderr
    assert stages_run(result) == ["fine-tune", "evaluate"], "a fine_tune key other than unfreeze: no extraction"
    assert "training from the trunk cache in data/features/trunk, not the photos" in result.stderr
    assert "the top from conv5_block3_1_conv" in result.stderr
    assert [row[0] for row in from_cache] == [0, 1, 2, 3]
    assert from_cache[0][3] == pytest.approx(through_images[0][3], abs=1e-4), "epoch 0: the same model, scored"
    for cached, whole in zip(from_cache[1:], through_images[1:], strict=True):
        assert cached[1] == pytest.approx(whole[1], abs=0.02) and cached[3] == pytest.approx(whole[3], abs=0.02)
    assert saved["loss"] == pytest.approx(tuned["val_loss"], abs=1e-4)
    assert tuned["best_epoch"] > 0 and tuned["blend"] == 1.0 and halfway["blend"] == 0.5
    assert halfway["best_epoch"] == tuned["best_epoch"], "the same training"
    head, full = np.array(kernels["head"]), np.array(kernels["model"])
    assert np.array_equal(np.array(halfway_kernels["head"]), head) and not np.allclose(head, full)
    np.testing.assert_allclose(halfway_kernels["model"], (head + full) / 2, rtol=1e-5, atol=1e-6)
    assert halfway_saved["loss"] == pytest.approx(halfway["val_loss"], abs=1e-4), "scored again as saved"
    assert halfway["val_loss"] != pytest.approx(tuned["val_loss"], abs=1e-6)


def test_head_and_fine_tune_experiments_never_read_a_training_photo(repo, first_run):
    """The proof that no stage of a head or fine-tune experiment runs the frozen trunk over the training photos:
    with every photo of the train and validation splits replaced by bytes no decoder can read, train-head and
    fine-tune (default params: the trunk cache) still train, from the caches alone."""
    _back_to_baseline(repo)
    photos = [repo / "data/raw" / row.split(",")[0] for split in ("train", "val")
              for row in (repo / f"data/splits/{split}.csv").read_text().splitlines()[1:]]
    for photo in photos:
        photo.unlink()  # DVC may link outputs to its cache: never write through them
        photo.write_bytes(b"not an image")
    params = (repo / "params.yaml").read_text()
    assert "trunk_views: 0" in params
    (repo / "params.yaml").write_text(params.replace("lr: 0.001", "lr: 0.002", 1))
    head = run(["python", "stages/train_head.py"], repo, check=False)
    tune = run(["python", "stages/fine_tune.py"], repo, check=False)
    (repo / "params.yaml").write_text(params)
    run(["dvc", "checkout", "--force"], repo)
    _back_to_baseline(repo)
    assert head.returncode == 0, head.stderr[-2000:]
    assert tune.returncode == 0, tune.stderr[-2000:]
    assert "training from the trunk cache in data/features/trunk, not the photos" in tune.stderr
    assert "each drawn as given, mirrored;" in tune.stderr, "no augmented copies by default"
    assert (repo / "data/raw" / photos[0].relative_to(repo / "data/raw")).read_bytes() != b"not an image"


def test_changing_where_fine_tuning_starts_extracts_the_trunk_again(repo, first_run):
    _back_to_baseline(repo)
    result = run(["dvc", "exp", "run", "-S", "fine_tune.unfreeze=12"], repo)
    meta = json.loads((repo / "data/features/trunk/meta.json").read_text())
    _back_to_baseline(repo)
    assert stages_run(result) == ALL_STAGES[2:]
    assert meta["unfreeze"] == 12 and meta["first_layer"] != "conv5_block3_1_conv"


def test_augmented_copies_in_the_cache_train_the_head(repo, first_run):
    _back_to_baseline(repo)
    result = run(["dvc", "exp", "run", "-S", "features.train_views=2", "-S", "fine_tune.epochs=0"], repo)
    meta = json.loads((repo / "data/features/meta.json").read_text())
    quality = json.loads((repo / "reports/data_quality/metrics.json").read_text())
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    _back_to_baseline(repo)
    assert stages_run(result) == ["extract-features", "train-head", "fine-tune", "evaluate"]
    assert meta["counts"]["train_views"] == 2 * meta["counts"]["train"]
    assert f"train-head: {meta['counts']['train']} training images and {2 * meta['counts']['train']} augmented " \
           "copies of them" in result.stderr
    assert quality["images"] == 45, "the report is on the photos as they are, not their copies"
    assert metrics["images"] == 9 and metrics["accuracy"] >= 0.6


def test_a_reviewed_exclusion_reruns_from_split_and_every_other_image_keeps_its_split(repo, first_run):
    _back_to_baseline(repo)
    splits = ("train", "val", "test")
    before = {split: read_csv(repo / f"data/splits/{split}.csv") for split in splits}
    dropped = [before["train"][0]["path"], before["test"][0]["path"]]
    (repo / "curation/exclude.csv").write_text("file\n" + "".join(f"{name}\n" for name in dropped))
    status = run(["dvc", "status"], repo).stdout
    assert "split:" in status and "curation/exclude.csv" in status, status
    result = run(["dvc", "repro"], repo)
    assert stages_run(result) == ALL_STAGES[1:]
    after = {split: read_csv(repo / f"data/splits/{split}.csv") for split in splits}
    assert after == {"train": before["train"][1:], "val": before["val"], "test": before["test"][1:]}
    report = json.loads((repo / "reports/data.json").read_text())
    assert report["curation"]["excluded"] == {"train": 1, "val": 0, "test": 1}
    assert {row["path"] for row in report["excluded"] if "curation/exclude.csv" in row["reason"]} == set(dropped)
    assert json.loads((repo / "reports/metrics.json").read_text())["images"] == 8
    _back_to_baseline(repo)


def test_a_head_search_keeps_the_trial_with_the_lowest_validation_loss(repo, first_run):
    _back_to_baseline(repo)
    result = run(["dvc", "exp", "run", "-S", "head.search=3"], repo)
    assert stages_run(result) == ["train-head", "fine-tune", "evaluate"]
    trials = read_csv(repo / "reports/head/search.csv")
    assert [int(row["trial"]) for row in trials] == [0, 1, 2]
    assert float(trials[0]["lr"]) == 1e-3, "the params as written are trial 0"
    kept = [row for row in trials if row["kept"] == "1"]
    assert len(kept) == 1 and float(kept[0]["val_loss"]) == min(float(row["val_loss"]) for row in trials)
    head = json.loads((repo / "reports/head/metrics.json").read_text())
    assert head["search_trials"] == 3 and head["chosen_trial"] == int(kept[0]["trial"])
    assert head["chosen_lr"] == float(kept[0]["lr"]) and head["chosen_dropout"] == float(kept[0]["dropout"])
    assert head["best_epoch"] == int(kept[0]["best_epoch"]) and head["epochs_run"] == int(kept[0]["epochs_run"])
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert "chosen_lr" in json.dumps(shown), "the kept setting is a DVC metric"
    assert "reports/head/search.csv" in (repo / "dvc.lock").read_text()


def test_a_backbone_experiment_extracts_again(repo, first_run):
    _back_to_baseline(repo)
    result = run(["dvc", "exp", "run", "-S", "backbone=vgg16"], repo)
    assert stages_run(result) == ["extract-features", "train-head", "fine-tune", "evaluate"]
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo).stdout)
    assert "accuracy" in diff["reports/metrics.json"]
    assert json.loads((repo / "data/features/meta.json").read_text())["backbone"] == "vgg16"


def test_a_bad_param_fails_with_one_line_naming_the_key(repo, first_run):
    _back_to_baseline(repo)
    result = run(["dvc", "exp", "run", "-S", "head.dropout=1.5"], repo, check=False)
    assert result.returncode != 0
    assert "error: params.yaml: head.dropout = 1.5 is invalid: expected a number in [0.0, 1.0)" in result.stderr
    assert "Traceback" not in result.stderr


def _runs(repo):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")  # runs:/ model URIs resolve through it
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("transfer")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_each_execution_is_one_complete_mlflow_run_in_the_workspace_store(repo, first_run):
    _back_to_baseline(repo)  # the first run's reports, whatever experiment this module's last test left
    client, runs = _runs(repo)
    first = runs[0]
    assert first.info.run_name == "workspace"
    assert first.data.params["backbone"] == "resnet50" and first.data.params["head.epochs"] == "40"
    assert first.data.tags["backbone"] == "resnet50" and len(first.data.tags["git_commit"]) == 40
    assert first.data.metrics["accuracy"] == json.loads((repo / "reports/metrics.json").read_text())["accuracy"]
    for name in ("extract_features_seconds", "extract_features_images_per_second", "train_head_seconds",
                 "data_quality_images", "extract_features_data_quality_seconds"):
        assert first.data.metrics[name] > 0, name
    assert "data_quality_label_issues" in first.data.metrics and "leaked_test_images" in first.data.metrics
    # The run lasts as long as the execution: the six stages' times, not the seconds evaluate took to log it.
    timings = [json.loads(path.read_text()) for path in (repo / "reports/timings").glob("*.json")]
    assert len(timings) == 6 and len({timing["execution"] for timing in timings}) == 1, "one dvc repro ran all"
    total = sum(timing["seconds"] for timing in timings)
    duration = (first.info.end_time - first.info.start_time) / 1000
    assert abs(duration - total) <= 0.1 * total, (duration, total)
    assert len(client.get_metric_history(first.info.run_id, "head_epoch_val_loss")) >= 1
    assert len(client.get_metric_history(first.info.run_id, "fine_tune_epoch_loss")) == 1
    artifacts = {a.path for folder in ("reports/evaluate", "reports/head", "reports/data_quality") for a in
                 client.list_artifacts(first.info.run_id, folder)}
    assert {"reports/evaluate/confusion_matrix.png", "reports/head/curves.png",
            "reports/data_quality/label_issues.csv", "reports/data_quality/outliers.png"} <= artifacts
    import mlflow

    model = mlflow.pyfunc.load_model(f"runs:/{first.info.run_id}/model")
    assert model.metadata.signature is not None, "the model is logged with a signature"
    import pandas as pd

    photo = mlflow.pyfunc.load_model(f"runs:/{first.info.run_id}/photo_model")  # image bytes in, classes out
    image = sorted((repo / "data/raw").rglob("*.png"))[0]
    answer = photo.predict(pd.DataFrame({"image": [image.read_bytes()]}))
    assert answer["label"][0] in {"circle", "square", "triangle"} and answer["error"][0] == ""
    # Git carries the record (it is not cached): the workspace, back at the first run's commit, names that run.
    assert json.loads((repo / "reports/tracking.json").read_text())["run_id"] == first.info.run_id


def test_a_run_restored_from_the_run_cache_is_still_logged(repo, first_run):
    _back_to_baseline(repo)
    _, before = _runs(repo)
    result = run(["dvc", "exp", "run", "-S", "head.lr=0.005"], repo)  # ran before: its stages are in the run-cache
    assert stages_run(result) == ["evaluate"], "train-head and fine-tune come from DVC's run-cache"
    _, after = _runs(repo)
    assert len(after) == len(before) + 1
    newest = after[-1]
    assert newest.data.params["head.lr"] == "0.005" and newest.data.tags["dvc_exp_name"] != "workspace"
    assert "head_epoch_loss" in newest.data.metrics, "the restored stages' curves are logged"
    # ... but not their seconds: they belong to the execution that ran them, and this one ran evaluate alone.
    assert {name for name in newest.data.metrics if name.endswith("_seconds")} == {"evaluate_seconds"}


def test_two_queued_experiments_run_at_once(repo, first_run):
    """``dvc queue start -j 2``: both experiments run side by side and succeed, both runs land complete in the
    workspace's store, and each experiment's outputs come back whole from the DVC cache."""
    import subprocess
    import time

    _back_to_baseline(repo)
    _, before = _runs(repo)
    for lr in ("0.02", "0.03"):
        run(["dvc", "exp", "run", "--queue", "-S", f"head.lr={lr}"], repo)
    # Not captured: the queue's detached workers inherit the pipes, and reading them would wait for the workers.
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=pipeline_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, most_running = time.time() + 900, 0
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        most_running = max(most_running, status.count("Running"))
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    assert status.count("Success") >= 2 and "Failed" not in status, status
    assert most_running == 2, f"the two experiments never ran at once:\n{status}"

    _, after = _runs(repo)
    runs = after[len(before):]
    assert sorted(r.data.params["head.lr"] for r in runs) == ["0.02", "0.03"]
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in runs)
    assert not list(repo.glob(".dvc/tmp/exps/**/mlflow.db")), "no store inside the temporary copies"
    compared = run([sys.executable, "-m", "transfer", "compare"], repo).stdout.splitlines()
    assert max(len(line) for line in compared) <= 119, compared
    for lr in ("0.02", "0.03"):  # one line each, its scores, and the param it changed
        line = next(line for line in compared if line.endswith(f"head.lr={lr}"))
        assert line.startswith("  ") and re.search(r" \d\.\d{4} +\d\.\d{4} +\d\.\d{4}  head", line), line
    checked = set()
    # The queue's own experiments (its status rows: task, name, created, status), not every one this module ran.
    queued = [line.split()[1] for line in status.splitlines() if line.rstrip().endswith("Success")]
    for name in queued:
        run(["dvc", "exp", "apply", name], repo)
        lr = str(read_params_file(repo / "params.yaml")["head"]["lr"])
        if lr in ("0.02", "0.03"):
            assert "up to date" in run(["dvc", "status"], repo).stdout, f"{name}: outputs differ from its lock file"
            logged = next(r for r in runs if r.data.params["head.lr"] == lr).data.metrics["accuracy"]
            assert json.loads((repo / "reports/metrics.json").read_text())["accuracy"] == logged
            checked.add(lr)
        _back_to_baseline(repo)
    assert checked == {"0.02", "0.03"}


def test_mlflow_server_serves_the_runs_over_rest(repo, first_run):
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", server, 120)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=transfer") as r:
            experiment_id = json.load(r)["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode(),
        )
        with urllib.request.urlopen(request) as response:
            runs = json.load(response)["runs"]
        assert len(runs) >= 2
        for found in runs:
            assert any(metric["key"] == "accuracy" for metric in found["data"]["metrics"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_unreachable_tracking_server_warns_and_the_stage_still_succeeds(repo, first_run):
    _back_to_baseline(repo)
    (repo / "reports/metrics.json").unlink()
    result = run(["python", "stages/evaluate.py"], repo, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert "MLflow tracking to http://127.0.0.1:9 failed" in result.stderr + result.stdout
    assert json.loads((repo / "reports/metrics.json").read_text())["images"] == 9
    assert all((repo / "reports/evaluate" / name).stat().st_size > 0 for name in EVALUATE_FILES)
    assert json.loads((repo / "reports/tracking.json").read_text())["run_id"] is None


def test_evaluate_options_add_tta_calibration_and_gradcam(repo, first_run):
    _back_to_baseline(repo)
    result = run(["dvc", "exp", "run", "-S", "evaluate.tta=true", "-S", "evaluate.temperature_scaling=true",
                  "-S", "evaluate.gradcam=4"], repo)
    assert stages_run(result) == ["evaluate"]
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_temperature_scaled"] <= 1 and metrics["temperature"] > 0
    calibration = json.loads((repo / "reports/evaluate/calibration.json").read_text())
    assert sum(row["count"] for row in calibration["bins"]["temperature_scaled"]) == metrics["images"]
    assert len(json.loads((repo / "reports/evaluate/gradcam.json").read_text())) == 4
    for name in ("reliability.png", "gradcam.png"):
        assert (repo / "reports/evaluate" / name).stat().st_size > 0
    _, runs = _runs(repo)
    client, _ = _runs(repo)
    artifacts = {a.path for a in client.list_artifacts(runs[-1].info.run_id, "reports/evaluate")}
    assert {"reports/evaluate/gradcam.png", "reports/evaluate/reliability.png"} <= artifacts
    assert "ece_temperature_scaled" in runs[-1].data.metrics


def test_the_trained_model_predicts_and_exports_from_the_command_line(repo, first_run):
    _back_to_baseline(repo)
    result = run(["python", "-m", "transfer", "predict", "models/model.keras", "data/raw", "--out",
                  "predictions.csv"], repo)
    assert json.loads(result.stdout)["files"] == 45
    header = (repo / "predictions.csv").read_text().splitlines()[0]
    assert header == "file,predicted,confidence,top_3,circle,square,triangle,error"
    result = run(["python", "-m", "transfer", "export", "--format", "tflite", "--quantize", "float16"], repo)
    report = json.loads(result.stdout)
    assert report["images"] == 9, "checked on the test split by default"
    assert report["top1_agreement"] >= 0.99
    assert (repo / "models/model_float16.tflite").stat().st_size > 0
