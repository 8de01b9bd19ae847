"""``strategy: multi_worker`` through the real pipeline: two hosts, played by two checkouts on this machine,
each running the same `dvc repro` with its own TF_CONFIG."""

import json
import subprocess

import numpy as np
import pytest

from tests.helpers import local_cluster, make_pipeline_repo, make_shapes_dataset, pipeline_env, stages_run

pytestmark = pytest.mark.slow


def test_two_hosts_run_one_pipeline_together(tmp_path):
    source = make_shapes_dataset(tmp_path / "shapes", per_class=12, size=40)
    overrides = {
        "data.source": str(source), "backbone": "resnet50", "weights": "none", "image_size": 32,
        "strategy": "multi_worker", "features.batch_size": 8, "head.epochs": 8, "head.batch_size": 8,
        "fine_tune.epochs": 1, "fine_tune.unfreeze": 3, "fine_tune.batch_size": 8,
    }
    repos = [make_pipeline_repo(tmp_path / f"host{index}", overrides) for index in range(2)]
    processes = [subprocess.Popen(["dvc", "repro"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=pipeline_env({"TF_CONFIG": config}))
                 for repo, config in zip(repos, local_cluster(2), strict=True)]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stdout[-3000:] + stderr[-5000:]
    for stdout, stderr in outputs:
        result = subprocess.CompletedProcess([], 0, stdout, stderr)
        assert stages_run(result) == ["download", "split", "extract-features", "train-head", "fine-tune", "evaluate"]

    # The same features, head history and test metrics on both hosts.
    first, second = repos
    for name in ("train", "val", "test"):
        a = np.load(first / f"data/features/{name}_features.npy")
        b = np.load(second / f"data/features/{name}_features.npy")
        np.testing.assert_array_equal(a, b)
    for report in ("reports/head/history.csv", "reports/fine_tune/history.csv", "reports/metrics.json"):
        assert (first / report).read_text() == (second / report).read_text(), report
    timing = json.loads((first / "reports/timings/train-head.json").read_text())
    assert timing["seconds"] > 0

    # Only the chief logs the execution.
    assert json.loads((first / "reports/tracking.json").read_text())["run_id"]
    assert json.loads((second / "reports/tracking.json").read_text())["run_id"] is None
    assert (first / "mlflow.db").exists() and not (second / "mlflow.db").exists()
    assert "strategy multi_worker: running on 2 replica(s)" in outputs[0][1]
