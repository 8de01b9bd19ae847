"""fine-tune: put the trained head on the backbone and train the top of both at a low learning rate.

With ``fine_tune.epochs: 0`` the backbone and head are only assembled, so ``models/model.keras`` always
exists and evaluate scores the artifact a user would deploy.

Reads params: seed, backbone, weights, image_size, fine_tune.*, strategy, mixed_precision.
Writes: models/model.keras (+ classes), reports/fine_tune/{history.csv,metrics.json,curves.png}
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.backbones import BackboneChoice, build_feature_extractor, resolve
from transfer.datasets import image_dataset, read_classes, read_split
from transfer.distribute import runtime
from transfer.errors import DataError
from transfer.io import write_json
from transfer.layout import CURVES, FINE_TUNE_REPORTS, HEAD_MODEL, HISTORY, MODEL, RAW, SPLITS, STAGE_METRICS
from transfer.models import assemble_classifier, load_model, save_model, unfreeze_top
from transfer.params import (
    DistributeParams,
    FineTuneParams,
    Params,
    read_backbone,
    read_distribute,
    read_fine_tune,
)
from transfer.reports import plot_history
from transfer.stage import run_stage
from transfer.training import (
    augmenter,
    best_epoch,
    class_weights,
    compile_for_training,
    fit,
    score,
    set_determinism,
    write_history,
)

log = logging.getLogger("fine-tune")


def parse_params(params: Params) -> tuple[int, BackboneChoice, FineTuneParams, DistributeParams]:
    backbone = resolve(read_backbone(params), params.source)
    return params.int("seed"), backbone, read_fine_tune(params), read_distribute(params)


def main() -> None:
    seed, choice, tune, distribute = parse_params(Params.load())
    classes = read_classes(SPLITS)
    setup = runtime(distribute)
    with setup.scope():
        extractor = build_feature_extractor(choice)
        # Seed before loading the head: its Dropout layers draw their random seeds as they are created.
        set_determinism(seed)
        head, head_classes = load_model(HEAD_MODEL)
        if head_classes != classes:
            raise DataError(f"{HEAD_MODEL} was trained on other classes than {SPLITS}; re-run train-head")
        model = assemble_classifier(extractor, head)
        unfrozen = unfreeze_top(model, tune.unfreeze)
        compile_for_training(model, tune.training.lr, tune.training.label_smoothing)

    def labelled(split: str, shuffle_seed: int | None = None):
        paths, labels = read_split(SPLITS, split, RAW, classes)
        dataset = image_dataset(paths, choice.image_size, tune.training.batch_size, labels, len(classes), shuffle_seed)
        return dataset, labels

    validation, val_labels = labelled("val")
    validation = validation if len(val_labels) else None
    rows = []
    if tune.training.epochs:
        train, train_labels = labelled("train", shuffle_seed=seed)
        augment = augmenter(tune.augment, seed)
        if augment is not None:
            train = train.map(lambda images, targets: (augment(images, training=True), targets))
        log.info("fine-tune: training %d backbone layers from %s, and the head, at lr %g",
                 len(unfrozen), unfrozen[0] if unfrozen else "-", tune.training.lr)
        weights = class_weights(train_labels, len(classes), tune.training.class_weight)
        rows = fit(model, train, validation, tune.training, weights, strategy=setup.strategy)

    save_model(model, MODEL, classes)
    write_history(FINE_TUNE_REPORTS / HISTORY, rows)
    plot_history(rows, FINE_TUNE_REPORTS / CURVES, f"Fine-tuning {choice.spec.name}")
    scored = score(model, validation, tune.training.batch_size, setup.strategy) if validation is not None else {}
    write_json(FINE_TUNE_REPORTS / STAGE_METRICS, {
        "val_accuracy": scored.get("accuracy"),
        "val_loss": scored.get("loss"),
        "best_epoch": best_epoch(rows),
        "epochs_run": len(rows),
        "trainable_backbone_layers": len(unfrozen) if tune.training.epochs else 0,
    })


if __name__ == "__main__":
    run_stage("fine-tune", main)
