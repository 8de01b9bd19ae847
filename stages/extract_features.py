"""extract-features: run the frozen backbone once over every split and cache its pooled features; then the
data-quality report from them (transfer/data/quality.py): suspected label errors, near-duplicates across splits and
outliers. Here, once per feature cache, and not in train-head, which would redo it for every head experiment
although nothing in it depends on the head.

The same pass writes, for fine-tune, the frozen trunk's output at the fine-tune boundary (fine_tune.unfreeze)
for every training and validation image and its mirror, and for features.trunk_views augmented copies of each
training image (transfer/model/trunk.py): fine-tune then trains only the layers it unfreezes.

Reads params: backbone, weights, image_size, features.*, fine_tune.unfreeze (where the trunk is cut), strategy,
mixed_precision; seed and quality.* for the report.
Writes: data/features/ ({split}_features.npy, {split}_labels.npy, meta.json; train_views_* with
features.train_views; trunk/), reports/data_quality/
(label_issues.csv, near_duplicates.csv, outliers.csv, label_issues.png, outliers.png, metrics.json; with
quality.report false, only the figures and metrics.json, saying nothing was checked)
"""

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.warm import hand_over

hand_over(__name__, __file__)  # into a fork of the warm server that has TensorFlow imported, when one can serve

from transfer.data import catalog, quality, quality_report
from transfer.data.splits import SPLITS as SPLIT_NAMES
from transfer.data.splits import read_classes, read_split
from transfer.layout import DATA_QUALITY_REPORTS, FEATURES, RAW, SPLITS
from transfer.model.backbones import backbone_digest, build_views
from transfer.model.distribute import runtime
from transfer.model.features import FeatureStore, changing_extractor, extract_features
from transfer.model.registry import BackboneChoice, resolve
from transfer.model.trunk import check_disk, plan_trunk
from transfer.params import Params
from transfer.schema import (
    DistributeParams,
    FeatureParams,
    QualityParams,
    read_backbone,
    read_distribute,
    read_features,
    read_quality,
    read_unfreeze,
)
from transfer.stage import run_stage

log = logging.getLogger("extract-features")


def parse_params(params: Params) -> tuple[BackboneChoice, FeatureParams, DistributeParams, int, QualityParams,
                                          int | str]:
    return (resolve(read_backbone(params), params.source), read_features(params), read_distribute(params),
            params.seed(), read_quality(params), read_unfreeze(params))


def report_data_quality(checks: QualityParams, seed: int) -> float:
    """reports/data_quality from the feature cache just written; returns its seconds (for the stage's timing
    record, not for metrics.json, whose figures are the same for the same inputs)."""
    start = time.perf_counter()
    if not checks.report:
        quality_report.write_report_off(DATA_QUALITY_REPORTS)
        log.info("data quality: not checked (quality.report is false)")
        return round(time.perf_counter() - start, 2)
    images = catalog.load_images(FeatureStore(FEATURES), SPLITS, RAW)
    report = quality.assess(images, checks.folds, checks.duplicate_ratio, seed)
    metrics = quality_report.summary(images, report)
    quality_report.write_report(images, report, DATA_QUALITY_REPORTS, RAW, checks.gallery, metrics)
    seconds = time.perf_counter() - start
    log.info("data quality: %d suspected label error(s), %d near-duplicate pair(s) across splits (%d test image(s) "
             "leaked), %d outlier(s), in %.1f s (see %s)", metrics["label_issues"], metrics["near_duplicate_pairs"],
             metrics["leaked_test_images"], metrics["outliers"], seconds, DATA_QUALITY_REPORTS)
    warning = quality.implausible_duplicates(images, report)
    if warning:
        log.warning("WARNING: data quality: %s", warning)
    return round(seconds, 2)


def main() -> dict:
    choice, features, distribute, seed, checks, unfreeze = parse_params(Params.load())
    classes = read_classes(SPLITS)
    splits = {split: read_split(SPLITS, split, RAW, classes) for split in SPLIT_NAMES}
    setup = runtime(distribute)
    with setup.scope():
        extractor, single_view = build_views(choice, mirror=features.mirror)
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
    views = None
    if features.train_views:
        with setup.scope():
            views = (changing_extractor(extractor, features.view_augment, seed), features.train_views)
        log.info("extract-features: %d augmented copies of each of the %d training images besides it",
                 features.train_views, len(splits["train"][0]))
    with setup.scope():
        trunk, said = plan_trunk(single_view, choice.spec.preprocessing, unfreeze, features.mirror,
                                 features.trunk_views, features.view_augment, seed,
                                 {"backbone_sha256": meta["backbone_sha256"], "image_size": meta["image_size"]})
    if trunk is not None:
        needed = trunk.bytes_for({split: len(splits[split][0]) for split in trunk.splits}, features.dtype)
        check_disk(FEATURES, needed)
        said = f"{said}: {needed / 2**20:.0f} MiB"
    log.info("extract-features: for fine-tune, %s", said)
    stats = extract_features(extractor, choice.image_size, splits, FEATURES, features.batch_size, features.dtype,
                             meta, runtime=setup, views=views, trunk=trunk)
    return {**stats, "data_quality_seconds": report_data_quality(checks, seed)}


if __name__ == "__main__":
    run_stage("extract-features", main)
