"""The blend benchmark fine-tunes once per seed and scores each blend as evaluate scores (generated images here)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_quick_blend_bench_scores_every_blend_and_the_unblended_one_as_evaluate_did(tmp_path):
    from bench.blend import BLENDS

    out = tmp_path / "blend.json"
    result = subprocess.run([sys.executable, "bench/blend.py", "--quick", "--seeds", "1", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    (backbone, record), = results["backbones"].items()
    assert backbone == "resnet50" and results["seeds"] == [0] and results["blends"] == list(BLENDS)
    seed = record["per_seed"]["0"]
    assert list(seed["blends"]) == [str(blend) for blend in BLENDS]
    assert seed["kept_epoch"] > 0, "a fine-tune that kept its start would make every blend the same model"
    # Blend 1 is the model the fine-tune stage saved, which evaluate scored on the same test photos.
    assert seed["blends"]["1.0"]["test_accuracy"] == pytest.approx(seed["evaluate_accuracy"], abs=1e-4)
    assert seed["blends"]["0.0"]["test_accuracy"] > 0.5, "chance is 0.33 on the three shapes"
    entropies = [row["test_cross_entropy"] for row in seed["blends"].values()]
    assert len(set(entropies)) == len(BLENDS), "each blend is another model"
    assert seed["chosen_on_validation"] in seed["blends"]
    assert set(record["summary"]) == {*seed["blends"], "chosen_on_validation"}
    for name in ("blend 0.0", "blend 1.0", "chosen on validation"):
        assert name in result.stdout, "the table names every row"


def test_a_bad_backbone_is_one_line():
    from bench.accuracy import DEV_ARCHIVE

    if not DEV_ARCHIVE.is_file():
        pytest.skip(f"{DEV_ARCHIVE} is absent: the archive is looked for first")
    result = subprocess.run([sys.executable, "bench/blend.py", "--backbones", "vgg99"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "error: no shared weights for vgg99; choose from" in result.stderr
