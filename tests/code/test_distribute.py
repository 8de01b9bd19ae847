"""The ``strategy`` and ``mixed_precision`` params: one device, two logical CPU devices, two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import local_cluster
from transfer.errors import ParamError
from transfer.model.classifier import float32_config
from transfer.model.distribute import _cluster_chief, is_chief, runtime
from transfer.params import Params
from transfer.schema import DistributeParams, read_distribute

HERE = Path(__file__).resolve().parent


def _result(completed: subprocess.CompletedProcess) -> dict:
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stdout[-2000:] + completed.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"strategy": "mirorred", "mixed_precision": "auto"}, "strategy = 'mirorred' is invalid: expected one of auto"),
        ({"strategy": "auto", "mixed_precision": "yes please"}, "mixed_precision = 'yes please' is invalid"),
    ],
)
def test_bad_values_are_refused_with_what_is_allowed(tree, message):
    with pytest.raises(ParamError, match=message):
        read_distribute(Params(tree))


def test_one_device_by_default(monkeypatch):
    setup = runtime(read_distribute(Params({"strategy": "auto", "mixed_precision": "auto"})))
    assert (setup.distributed, setup.chief, setup.replicas, setup.policy) == (False, True, 1, "float32")


@pytest.mark.parametrize(
    ("config", "chief"),
    [
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, True),
    ],
)
def test_only_the_chief_reports(monkeypatch, config, chief):
    assert _cluster_chief(config) is chief
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert is_chief() is chief


def test_without_a_cluster_this_process_reports(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief()


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "TF_CONFIG is not set"), ("{not json", "TF_CONFIG is not valid JSON"), ('{"task": {}}', "is invalid")],
)
def test_multi_worker_needs_a_cluster(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ParamError, match=message):
        runtime(DistributeParams("multi_worker", False))


def test_a_saved_model_is_float32_whatever_the_policy_and_keeps_its_layer_names():
    config = {
        "name": "mixed_6a",
        "layers": [
            {"name": "mixed_7a", "dtype": {"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}},
            {"name": "probabilities", "dtype": {"class_name": "DTypePolicy", "config": {"name": "float32"}}},
            {"name": "conv", "dtype": "mixed_bfloat16"},
        ],
    }
    rewritten = float32_config(config)
    assert rewritten["name"] == "mixed_6a" and rewritten["layers"][0]["name"] == "mixed_7a"
    assert [layer["dtype"] for layer in rewritten["layers"]] == [
        {"class_name": "DTypePolicy", "config": {"name": "float32"}},
        {"class_name": "DTypePolicy", "config": {"name": "float32"}},
        "float32",
    ]


@pytest.mark.slow
def test_mirrored_on_two_logical_cpu_devices_matches_one_device():
    """Extraction, head training, fine-tuning and mixed precision under ``strategy: mirrored`` on 2 CPU devices."""
    result = _result(subprocess.run([sys.executable, str(HERE / "two_devices.py")], capture_output=True, text=True,
                                    timeout=600))
    assert result["replicas"] == 2 and result["distributed"] and result["chief"]
    assert [device[-5:] for device in result["devices"]] == ["CPU:0", "CPU:1"]
    # Each image's features land in its own row, the last short batch (5 images over 2 replicas) included.
    assert result["features_max_difference"] < 1e-5 and result["features_labels_equal"]
    assert result["test_rows"] == 7
    # The same global batches averaged over 2 replicas: the same training, up to float rounding.
    one, two = result["head_losses"]
    np.testing.assert_allclose(two, one, rtol=0.02)
    assert one[-1] < one[0] / 3 and result["head_accuracy"] > 0.9
    assert result["head_variables_mirrored"]
    assert result["head_probability_difference"] < 0.1
    # The loop that trains across hosts follows Keras' fit: the same history, epoch by epoch.
    keras_rows, loop_rows = result["custom_loop_rows"]
    assert [row["epoch"] for row in loop_rows] == [row["epoch"] for row in keras_rows]
    for keras_row, loop_row in zip(keras_rows, loop_rows, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert loop_row[key] == pytest.approx(keras_row[key], rel=0.01, abs=0.02), (key, keras_row, loop_row)
    assert result["fine_tune_unfrozen"] > 0 and all(np.isfinite(result["fine_tune_losses"]))
    assert result["loaded_classes"] == ["circle", "square", "triangle"]
    assert result["loaded_probability_sums"] == [1.0] * 5
    mixed = result["mixed"]
    assert mixed["policy"] == "mixed_float16" and mixed["feature_dtype"] == "float16"
    assert mixed["probability_dtype"] == "float32" and mixed["loss_finite"]
    assert mixed["loaded_policies"] == ["float32"], "the deployable model is saved as float32"


@pytest.mark.slow
def test_multi_worker_across_two_processes(shapes_folder, tmp_path):
    """Two workers of one TF_CONFIG cluster share an extraction and a head's training, and end up alike."""
    from transfer.model.backbones import build_feature_extractor
    from transfer.model.features import FeatureStore, extract_features
    from transfer.model.registry import resolve
    from transfer.schema import BackboneParams

    processes = [
        subprocess.Popen(
            [sys.executable, str(HERE / "one_worker.py"), str(shapes_folder), str(tmp_path / f"worker{index}")],
            env={**os.environ, "TF_CONFIG": config}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index, config in enumerate(local_cluster(2))
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append(_result(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)))
    assert [(r["index"], r["chief"], r["replicas"]) for r in results] == [(0, True, 2), (1, False, 2)]

    # Extraction: each worker extracted its share and wrote every row, in file order, as one device would.
    paths = sorted(str(path) for path in shapes_folder.rglob("*.*"))
    extractor = build_feature_extractor(resolve(BackboneParams("mobilenetv2_0.35", "none", (32, 32))))
    extract_features(extractor, (32, 32), {"train": (paths, np.arange(len(paths)))}, tmp_path / "one", 8,
                     "float32", {})
    alone, _ = FeatureStore(tmp_path / "one").load("train")
    for worker in ("worker0", "worker1"):
        together, labels = FeatureStore(tmp_path / worker / "features").load("train")
        assert together.shape == alone.shape == (len(paths), 1280)
        np.testing.assert_array_equal(labels, np.arange(len(paths)))
        np.testing.assert_allclose(together, alone, atol=1e-5)

    # The head: the same history and the same weights on both workers; it learnt, with validation scores.
    assert results[0]["rows"] == results[1]["rows"]
    rows = results[0]["rows"]
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["val_accuracy"] > 0.8
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))
    first, second = (np.load(tmp_path / worker / "head.npz") for worker in ("worker0", "worker1"))
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
