"""extract-features: run the frozen backbone once over every split and cache its pooled features.

Reads params: backbone, weights, image_size, features.batch_size, features.dtype, features.mirror, strategy,
mixed_precision.
Writes: data/features/ ({split}_features.npy, {split}_labels.npy, meta.json)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.backbones import BackboneChoice, backbone_digest, build_feature_extractor, resolve
from transfer.datasets import SPLITS as SPLIT_NAMES
from transfer.datasets import read_classes, read_split
from transfer.distribute import runtime
from transfer.features import extract_features
from transfer.layout import FEATURES, RAW, SPLITS
from transfer.params import DistributeParams, FeatureParams, Params, read_backbone, read_distribute, read_features
from transfer.stage import run_stage


def parse_params(params: Params) -> tuple[BackboneChoice, FeatureParams, DistributeParams]:
    return resolve(read_backbone(params), params.source), read_features(params), read_distribute(params)


def main() -> dict:
    choice, features, distribute = parse_params(Params.load())
    classes = read_classes(SPLITS)
    splits = {split: read_split(SPLITS, split, RAW, classes) for split in SPLIT_NAMES}
    setup = runtime(distribute)
    with setup.scope():
        extractor = build_feature_extractor(choice, mirror=features.mirror)
    meta = {
        "backbone": choice.spec.name,
        "weights": choice.weights if choice.weights in ("imagenet", None) else Path(choice.weights).name,
        "image_size": list(choice.image_size),
        "mirror": features.mirror,
        "classes": classes,
        # Which weights made these features: fine-tune checks its backbone against it (a weights file replaced
        # at the same path is not a change DVC sees).
        "backbone_sha256": backbone_digest(extractor),
    }
    return extract_features(extractor, choice.image_size, splits, FEATURES, features.batch_size, features.dtype, meta,
                            runtime=setup)


if __name__ == "__main__":
    run_stage("extract-features", main)
