"""The benchmark harness runs end to end on generated images (its timings are not asserted: they are noise)."""

import json
import subprocess
import sys

import pytest

from bench.run import TARGETS
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_quick_bench_on_generated_images_writes_every_ratio(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", "--generated", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["dataset"] == "generated shapes 180" and results["quick"] is True
    assert set(results["ratios"]) == set(TARGETS)
    for name, row in results["ratios"].items():
        assert row["value"] >= 0, name
        assert (row["met"] is None) == (TARGETS[name] is None), name
    for name in TARGETS:
        assert name in result.stdout, "the table names every ratio"
