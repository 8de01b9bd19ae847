"""The near-duplicate bench: planted re-encoded copies against pairs of different photos, judged by the report's
own rule (on generated photos of objects against one plain background here)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


def test_generated_photos_share_one_background_and_differ_in_their_object(tmp_path):
    import numpy as np
    from PIL import Image

    from bench.duplicates import SHAPES, plain_background_photos, with_copies

    root = plain_background_photos(tmp_path / "plain", per_class=3, size=64, seed=0)
    photos = sorted(root.rglob("*.jpg"))
    assert len(photos) == 3 * len(SHAPES) and {path.parent.name for path in photos} == set(SHAPES)
    pixels = np.stack([np.asarray(Image.open(path), np.float32) for path in photos])
    corners = pixels[:, :4, :4].reshape(len(photos), -1).mean(axis=1)
    assert corners.std() < 12 and abs(corners.mean() - 200) < 15, "one plain background, lit a little differently"
    assert np.abs(pixels[0] - pixels[1]).max() > 60, "objects of their own"
    everything, planted = with_copies(root, 2, seed=0)
    assert len(everything) == len(photos) + 2
    assert all(everything[copy].name == f"copy_{everything[original].stem}.jpg" for original, copy in planted)


@pytest.mark.slow
def test_quick_duplicates_bench_finds_the_copies_and_times_the_report(tmp_path):
    out = tmp_path / "duplicates.json"
    result = subprocess.run([sys.executable, "bench/duplicates.py", "--quick", "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())["plain"]
    assert record["photos"] == 200 and record["copies"] == 4 and record["pairs"] == 204 * 203 // 2
    assert record["ratios"]["0.20"]["copies_found"] == 4
    flagged = [row["pairs_flagged"] for row in record["ratios"].values()]
    assert flagged == sorted(flagged), "a higher ratio never flags fewer"
    assert record["cost"]["report_seconds"] > 0 and len(record["cost"]["feature_rank_of_original"]) == 4
    assert json.loads(out.read_text())["small"]["copies"] == 4
    assert "copies found" in result.stdout
