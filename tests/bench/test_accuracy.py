"""The accuracy benchmark runs the real pipeline over seeds and levers (on generated images here)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_quick_accuracy_bench_runs_the_pipeline_and_a_lever(tmp_path):
    out = tmp_path / "accuracy.json"
    result = subprocess.run(
        [sys.executable, "bench/accuracy.py", "--quick", "--seeds", "1", "--levers", "adam_not_adamw",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True and results["seeds"] == [0] and results["lever_seeds"] == [0]
    (backbone, record), = results["backbones"].items()
    assert backbone == "resnet50" and set(record["per_seed"]) == {"0"}
    for seed_record in record["per_seed"].values():
        default = seed_record["default"]
        assert 0 <= default["head_test_accuracy"] <= 1 and 0 <= default["fine_tuned_test_accuracy"] <= 1
        assert default["test_images"] == 12 and 0 <= default["fine_tune_kept_epoch"] <= 2
        assert seed_record["linear_probe"]["test_accuracy"] > 0.5, "chance is 0.33 on the three shapes"
    assert set(record["per_seed"]["0"]["levers"]["adam_not_adamw"]) == set(record["per_seed"]["0"]["default"])
    summary = record["summary"]
    assert set(summary["levers"]) == {"adam_not_adamw"} and summary["levers"]["adam_not_adamw"]["seeds"] == 1
    assert summary["head"]["min"] <= summary["head"]["mean"] <= summary["head"]["max"]
    for name in ("linear_probe", "head", "fine_tuned", "lever adam_not_adamw"):
        assert name in result.stdout, "the table names every row"


def _run(accuracy: float, head: float) -> dict:
    return {"head_test_accuracy": head, "fine_tuned_test_accuracy": accuracy, "test_images": 150}


def test_the_summary_spans_seeds_and_counts_levers_on_the_seeds_that_measured_them():
    from bench.accuracy import summarise

    per_seed = {
        0: {"default": _run(0.86, 0.84), "linear_probe": {"test_accuracy": 0.88},
            "levers": {"adam_not_adamw": _run(0.84, 0.83)}},
        1: {"default": _run(0.80, 0.82), "linear_probe": {"test_accuracy": 0.86}, "levers": {}},
    }
    table = summarise(per_seed)
    assert table["fine_tuned"] == {"mean": 0.83, "min": 0.8, "max": 0.86, "stdev": pytest.approx(0.0424, abs=1e-4)}
    assert table["fine_tuned_at_least_head_every_seed"] is False
    # The same 130 of 150 photos, as Keras' float32 mean and as evaluate's float64 ratio: equal, not a loss.
    per_seed[1]["default"] = _run(130 / 150, float(np.float32(130) / np.float32(150)))
    assert per_seed[1]["default"]["head_test_accuracy"] > per_seed[1]["default"]["fine_tuned_test_accuracy"]
    assert summarise(per_seed)["fine_tuned_at_least_head_every_seed"] is True
    lever = table["levers"]["adam_not_adamw"]
    assert lever["seeds"] == 1 and lever["default_minus_switched"]["mean"] == pytest.approx(0.02)
    assert lever["head"]["mean"] == 0.83 and lever["head_default_minus_switched"]["mean"] == pytest.approx(0.01)


def test_a_bad_lever_is_one_line():
    result = subprocess.run([sys.executable, "bench/accuracy.py", "--quick", "--levers", "bogus"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "error: --levers ['bogus'] unknown" in result.stderr
