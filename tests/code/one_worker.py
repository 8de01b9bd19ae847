"""Run by test_distribute.py as one of two processes of a ``TF_CONFIG`` cluster on this host: extracts the
features of a folder of images under ``strategy: multi_worker`` into ``<target>``; only the chief writes.

    python tests/code/one_worker.py <image folder> <target>
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from transfer.backbones import build_feature_extractor, resolve  # noqa: E402
from transfer.distribute import runtime  # noqa: E402
from transfer.features import extract_features  # noqa: E402
from transfer.params import BackboneParams, DistributeParams  # noqa: E402

folder, target = Path(sys.argv[1]), Path(sys.argv[2])
setup = runtime(DistributeParams("multi_worker", False))
paths = sorted(str(path) for path in folder.rglob("*.*"))
with setup.scope():
    extractor = build_feature_extractor(resolve(BackboneParams("mobilenetv2_0.35", "none", (32, 32))))
extract_features(extractor, (32, 32), {"train": (paths, np.arange(len(paths)))}, target, 8, "float32", {},
                 runtime=setup)
task = json.loads(os.environ["TF_CONFIG"])["task"]
print("RESULT " + json.dumps({"index": task["index"], "chief": setup.chief, "replicas": setup.replicas}))
