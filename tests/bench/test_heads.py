"""The head study trains train-head's recipe on the pipeline's own features and splits (generated images here)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, make_shapes_dataset


@pytest.mark.slow
def test_quick_head_study_scores_every_variant_and_both_probes(tmp_path):
    from bench.heads import VARIANTS

    out = tmp_path / "heads.json"
    result = subprocess.run([sys.executable, "bench/heads.py", "--quick", "--seeds", "1", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    (backbone, record), = results["backbones"].items()
    assert backbone == "resnet50" and results["seeds"] == [0] and set(results["variants"]) == set(VARIANTS)
    expected = {"probe_single_view", "probe_mirror", *VARIANTS, "search_over_variants"}
    assert set(record["summary"]) == expected
    for name, row in record["per_seed"][0].items():
        assert 0 <= row["test_accuracy"] <= 1, name
    assert record["summary"]["probe_mirror"]["mean"] > 0.5, "chance is 0.33 on the three shapes"
    assert record["per_seed"][0]["search_over_variants"]["chosen"] in VARIANTS
    for name in expected:
        assert name in result.stdout, "the table names every row"


def test_the_study_splits_as_the_split_stage_does(tmp_path):
    from bench.heads import split_indices
    from transfer.data.images import scan_images
    from transfer.data.splits import stratified_split

    source = make_shapes_dataset(tmp_path / "shapes", per_class=10, size=24)
    scan = scan_images(source)
    splits = split_indices(scan, seed=3, val=0.2, test=0.2)
    staged = stratified_split(scan.images, scan.classes, 0.2, 0.2, 3)
    for name, rows in staged.items():
        indices, labels = splits[name]
        assert [scan.images[i][0] for i in indices] == [path for path, _ in rows]
        assert [scan.classes[label] for label in labels] == [cls for _, cls in rows]
    assert sorted(np.concatenate([splits[name][0] for name in splits]).tolist()) == list(range(len(scan.images)))
