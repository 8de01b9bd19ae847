"""Run by test_distribute.py as one of two processes of a ``TF_CONFIG`` cluster on this host, under
``strategy: multi_worker``: extracts the features of a folder of images into ``<out>/features``, then trains a
head on separable clusters with class weights and validation, and saves its weights as ``<out>/head.npz``.

    python tests/code/one_worker.py <image folder> <out>
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from transfer.data.pipeline import array_dataset  # noqa: E402
from transfer.model.backbones import build_feature_extractor  # noqa: E402
from transfer.model.distribute import runtime  # noqa: E402
from transfer.model.features import extract_features  # noqa: E402
from transfer.model.heads import build_head  # noqa: E402
from transfer.model.registry import resolve
from transfer.model.training import compile_for_training, fit, set_determinism
from transfer.schema import BackboneParams, DistributeParams, TrainingParams  # noqa: E402

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
setup = runtime(DistributeParams("multi_worker", False))
paths = sorted(str(path) for path in folder.rglob("*.*"))
with setup.scope():
    extractor = build_feature_extractor(resolve(BackboneParams("mobilenetv2_0.35", "none", (32, 32))))
extract_features(extractor, (32, 32), {"train": (paths, np.arange(len(paths)))}, out / "features", 8, "float32", {},
                 runtime=setup)

rng = np.random.default_rng(0)
labels = rng.integers(0, 3, 90)
features = (rng.normal(size=(90, 24)) + 3 * np.eye(3, 24)[labels]).astype(np.float32)
targets = np.eye(3, dtype=np.float32)[labels]
set_determinism(0)
with setup.scope():
    head = build_head(24, 3, (16,), 0.0, False)
    compile_for_training(head, 1e-2, 0.1)
training = TrainingParams(lr=1e-2, epochs=6, batch_size=16, patience=2, label_smoothing=0.1, class_weight="balanced")
rows = fit(head, array_dataset((features[:70], targets[:70]), 16), (features[70:], targets[70:]), training,
           {0: 1.0, 1: 2.0, 2: 0.5}, strategy=setup.strategy)
np.savez(out / "head.npz", *head.get_weights())
task = json.loads(os.environ["TF_CONFIG"])["task"]
print("RESULT " + json.dumps({"index": task["index"], "chief": setup.chief, "replicas": setup.replicas,
                              "rows": rows}))
