"""The data-quality benchmark plants label errors and a leak and runs the real pipeline (generated images here)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_quick_data_quality_bench_finds_what_it_planted(tmp_path):
    out = tmp_path / "data_quality.json"
    result = subprocess.run([sys.executable, "bench/data_quality.py", "--quick", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    flips = results["label_errors"]
    assert flips["photos"] == 90 and flips["flipped"] == round(0.05 * 90)
    assert flips["found_in_first_2x"] >= 0.8 * flips["flipped"], "three shapes tell planted errors apart"
    assert 0 < flips["report_seconds"] < flips["execution_seconds"]
    (cure,) = results["curation"].values()
    assert cure["suspects"] == cure["suspects_in_train_val"] + cure["suspects_in_test"]
    assert cure["dropped_everywhere_test_images"] == cure["test_images"] - cure["suspects_in_test"]
    leak = results["leak"]
    assert leak["planted"] == 10 and leak["found"] == 10, leak
    for text in ("planted label errors", "curation", "planted leak: 10 of 10 found"):
        assert text in result.stdout
