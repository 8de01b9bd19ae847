"""The near-duplicate threshold bench: re-encoded copies against different photos (on generated images here)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO


def test_the_table_counts_copies_found_and_different_pairs_reaching_each_threshold():
    from bench.duplicates import table

    record = table({"copies": np.array([0.95, 0.87, 0.81]), "different": np.array([0.5, 0.86, 0.9, 0.7]),
                    "original_is_nearest": np.array([True, True, False])})
    assert record["copies"] == 3 and record["different_pairs"] == 4 and record["original_is_nearest"] == 2
    assert record["thresholds"]["0.86"] == {"copies_found": 2, "different_pairs_at_or_above": 2}
    assert record["thresholds"]["0.88"] == {"copies_found": 1, "different_pairs_at_or_above": 1}
    assert record["copy_similarity"]["min"] == 0.81 and record["most_similar_different_pairs"][0] == 0.9


@pytest.mark.slow
def test_quick_duplicates_bench_pairs_each_copy_with_its_original(tmp_path):
    out = tmp_path / "duplicates.json"
    result = subprocess.run([sys.executable, "bench/duplicates.py", "--quick", "--copies", "6", "--image-sizes", "32",
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())["sizes"]["32"]
    assert record["copies"] == 6 and record["different_pairs"] == 60 * 59 // 2
    # Even random weights put most copies nearest their own original among the 60 photos: the pairing is right.
    assert record["original_is_nearest"] >= 4
    found = [row["copies_found"] for row in record["thresholds"].values()]
    assert found == sorted(found, reverse=True), "a higher threshold never finds more"
    assert "copies found" in result.stdout
    bad = subprocess.run([sys.executable, "bench/duplicates.py", "--quick", "--image-sizes", "16"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "--image-sizes '16'" in bad.stderr
