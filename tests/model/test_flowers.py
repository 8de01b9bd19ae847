"""Behaviour on real photos and real ImageNet weights (skips when ../shared/assets is absent)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import FLOWERS_ARCHIVE, MOBILENETV2_035_WEIGHTS, REPO, make_pipeline_repo, run, stages_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FLOWERS_ARCHIVE.is_file() or not MOBILENETV2_035_WEIGHTS.is_file(),
                       reason="needs ../shared/assets (flowers archive and MobileNetV2 0.35 weights)"),
]


def test_head_only_pipeline_reaches_80_percent_on_real_flowers(tmp_path):
    repo = make_pipeline_repo(tmp_path / "repo", {
        "data.source": str(FLOWERS_ARCHIVE),
        "backbone": "mobilenetv2_0.35",
        "weights": str(MOBILENETV2_035_WEIGHTS),
        "fine_tune.epochs": 0,
    })
    result = run(["dvc", "repro"], repo)
    assert stages_run(result)[-1] == "evaluate"
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    data = json.loads((repo / "reports/data.json").read_text())
    assert data["images"] == 500 and data["classes"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert metrics["images"] == 75
    assert metrics["accuracy"] >= 0.80, metrics


def test_imagenet_weights_load_from_a_seeded_keras_cache(tmp_path):
    """weights: imagenet goes through Keras' own download code; a seeded KERAS_HOME serves it offline."""
    (tmp_path / "keras" / "models").mkdir(parents=True)
    shutil.copy(MOBILENETV2_035_WEIGHTS, tmp_path / "keras" / "models" / MOBILENETV2_035_WEIGHTS.name)
    script = (
        "import sys, numpy as np\n"
        "from transfer.backbones import build_feature_extractor, resolve\n"
        "from transfer.params import BackboneParams\n"
        "images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype('float32')\n"
        "for weights in ('imagenet', sys.argv[1]):\n"
        "    extractor = build_feature_extractor(resolve(BackboneParams('mobilenetv2_0.35', weights, None)))\n"
        "    np.save(f'{sys.argv[2]}/{weights == \"imagenet\"}.npy', np.asarray(extractor(images)))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "KERAS_HOME": str(tmp_path / "keras"), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(MOBILENETV2_035_WEIGHTS), str(tmp_path)], env=env, check=True)
    from_cache, from_path = np.load(tmp_path / "True.npy"), np.load(tmp_path / "False.npy")
    np.testing.assert_array_equal(from_cache, from_path)
    assert from_cache.std() > 0.1, "pretrained features, not a degenerate random network"
