"""fine-tune: put the trained head on the backbone and train the top of both at a low learning rate.

By default (fine_tune.trunk_cache) the epochs train from the frozen trunk's output that extract-features cached
(data/features/trunk/, transfer/model/trunk.py): no photo is read and the frozen layers never run here. With
fine_tune.trunk_cache: false, or when nothing is frozen (unfreeze: all), every epoch runs the whole backbone on
the photos with fine_tune.augment's random changes.

With ``fine_tune.epochs: 0`` the backbone and head are only assembled, so ``models/model.keras`` always
exists and evaluate scores the artifact a user would deploy. Otherwise the assembled model is scored on
validation before the first step (epoch 0) and the best of epochs 0..N is kept, so fine-tuning never ends
with a higher validation loss than the head it started from.

Reads params: seed, backbone, weights, image_size, features.layer, features.mirror, fine_tune.*, strategy,
mixed_precision.
Writes: models/model.keras (+ classes), reports/fine_tune/{history.csv,metrics.json,curves.png}
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.warm import hand_over

hand_over(__name__, __file__)  # into a fork of the warm server that has TensorFlow imported, when one can serve

import numpy as np

from transfer.data.pipeline import augmenter, image_dataset
from transfer.data.splits import read_classes, read_split
from transfer.errors import DataError
from transfer.io import read_json, write_json
from transfer.layout import CURVES, FEATURES, FINE_TUNE_REPORTS, HEAD_MODEL, HISTORY, MODEL, RAW, SPLITS, STAGE_METRICS
from transfer.model.backbones import backbone_digest, build_views
from transfer.model.classifier import assemble_classifier, backbone_of, load_model, save_model, unfreeze_top
from transfer.model.distribute import runtime
from transfer.model.registry import BackboneChoice, resolve
from transfer.model.scoring import score
from transfer.model.stopping import best_epoch, cap_note
from transfer.model.training import blend_weights, class_weights, compile_with, fit, set_determinism, write_history
from transfer.model.trunk import TrunkCache, boundary_layer, classifiers, split_backbone
from transfer.params import Params
from transfer.report.figures import plot_history
from transfer.schema import DistributeParams, FineTuneParams, read_backbone, read_distribute, read_fine_tune
from transfer.stage import run_stage

log = logging.getLogger("fine-tune")


class CachedTop:
    """``fine_tune.trunk_cache``: the models that train and score the top of the backbone from the trunk's output
    cached in ``data/features/trunk`` (see :mod:`transfer.model.trunk`), built on the classifier's own layers."""

    def __init__(self, single_view, head, mirror: bool, first: str, unfreeze, digest: str):
        self.split = split_backbone(backbone_of(single_view), first)
        self.trained, self.scorer = classifiers(self.split, head, mirror)
        self.store = TrunkCache(FEATURES)
        self.store.check(unfreeze, self.split.first, digest, tuple(self.split.trunk.output.shape[1:]))
        self.mirror = mirror


def parse_params(params: Params) -> tuple[int, BackboneChoice, bool, FineTuneParams, DistributeParams]:
    backbone = resolve(read_backbone(params), params.source)
    return (params.seed(), backbone, params.bool("features.mirror"), read_fine_tune(params),
            read_distribute(params))


def check_backbone(extractor, choice: BackboneChoice) -> str:
    """The head was trained on features from one backbone's weights; put it on no other (a weights file
    replaced at the same path since extract-features ran, say). Returns the backbone's digest."""
    made = read_json(FEATURES / "meta.json").get("backbone_sha256")
    digest = backbone_digest(extractor)
    if made is not None and made != digest:
        raise DataError(
            f"the backbone's weights (weights = {choice.weights or 'none'}) are not the ones that made {FEATURES} "
            "and the head (the weights file changed since extract-features ran, and this stage was run without "
            "DVC?); `dvc repro` re-extracts and retrains: it sees the change in inputs/weights"
        )
    return digest


def main() -> None:
    seed, choice, mirror, tune, distribute = parse_params(Params.load())
    classes = read_classes(SPLITS)
    setup = runtime(distribute)
    splits = {split: read_split(SPLITS, split, RAW, classes) for split in ("train", "val")}
    train_labels = splits["train"][1]
    with setup.scope():
        extractor, single_view = build_views(choice, mirror)
        digest = check_backbone(extractor, choice)
        # Seed before loading the head: its Dropout layers draw their random seeds as they are created.
        set_determinism(seed)
        head, head_classes = load_model(HEAD_MODEL)
        if head_classes != classes:
            raise DataError(f"{HEAD_MODEL} was trained on other classes than {SPLITS}; re-run train-head")
        model = assemble_classifier(extractor, head)
        # What the steps train: the same layers (and weights) as the model, one view per image.
        trained = assemble_classifier(single_view, head) if mirror else model
        # With no epochs nothing trains: fine_tune.unfreeze is not used (a cut or from-scratch backbone may
        # have fewer layers than its default counts).
        unfrozen = unfreeze_top(model, tune.unfreeze) if tune.training.epochs else []
        cache = None
        first = boundary_layer(backbone_of(model), tune.unfreeze) if tune.training.epochs else None
        if tune.trunk_cache and first is not None:
            cache = CachedTop(single_view, head, mirror, first, tune.unfreeze, digest)
            trained = cache.trained
            compile_with(cache.scorer, tune.training, train_examples=len(train_labels))  # for scoring only
        compile_with(trained, tune.training, train_examples=len(train_labels))
        if trained is not model:
            compile_with(model, tune.training, train_examples=len(train_labels))  # for scoring only
        scorer = None if trained is model else (cache.scorer if cache else model)

    def labelled(split: str, shuffle_seed: int | None = None):
        paths, labels = splits[split]
        return image_dataset(paths, choice.image_size, tune.training.batch_size, labels, len(classes), shuffle_seed)

    hot = np.eye(len(classes), dtype="float32")
    if cache is not None:
        validation = cache.store.validation(hot[splits["val"][1]], tune.training.batch_size, mirror)
    else:
        validation = labelled("val") if len(splits["val"][1]) else None
    rows = []
    blended = None
    if tune.training.epochs:
        # Epoch 0: the assembled model before any step, which is the head as it left train-head. It competes
        # with the trained epochs, so fine-tuning can only keep or improve the validation loss.
        if validation is not None:
            start = score(scorer or model, validation, tune.training.batch_size, setup.strategy)
            rows.append({"epoch": 0, "loss": None, "accuracy": None, "val_loss": start["loss"],
                         "val_accuracy": start["accuracy"]})
            log.info("fine-tune: epoch 0 (the head on the backbone, before any step): val_loss %.4f, "
                     "val_accuracy %.4f", start["loss"], start["accuracy"])
        if cache is not None:
            train = cache.store.training(hot[train_labels], tune.training.batch_size, seed, tune.augment.flip)
            store = cache.store
            log.info("fine-tune: training from the trunk cache in %s, not the photos: %d training images, each drawn "
                     "as given%s%s; %d validation images%s; the top from %s", store.folder, len(train_labels),
                     ", mirrored" if tune.augment.flip else "",
                     f" or as one of {store.copies} augmented copies" if store.copies else "",
                     store.counts.get("val", 0), " (scored with their mirrors)" if mirror else "", cache.split.first)
        else:
            why = ("fine_tune.trunk_cache is false" if not tune.trunk_cache else
                   f"fine_tune.unfreeze = {tune.unfreeze} leaves no layer frozen")
            log.info("fine-tune: training through the whole backbone on the photos (%s), with fine_tune.augment's "
                     "random changes every epoch", why)
            train = labelled("train", shuffle_seed=seed)
            augment = augmenter(tune.augment, seed)
            if augment is not None:
                train = train.map(lambda images, targets: (augment(images, training=True), targets))
        log.info("fine-tune: training %d backbone layers from %s (BatchNormalization layers stay frozen) and the "
                 "head, %s at lr %g (%s schedule), up to %d epochs", len(unfrozen), unfrozen[0] if unfrozen else "-",
                 tune.training.optimizer, tune.training.lr, tune.training.schedule, tune.training.epochs)
        weights = class_weights(train_labels, len(classes), tune.training.class_weight)
        start_weights = [np.array(variable.numpy()) for variable in model.trainable_variables]
        rows += fit(trained, train, validation, tune.training, weights, strategy=setup.strategy,
                    start=rows[0]["val_loss"] if rows else None, scorer=scorer)
        kept = best_epoch(rows)
        log.info("fine-tune: kept epoch %d of %d%s", kept, len(rows) - (1 if validation is not None else 0),
                 " (the head as it came: no epoch lowered the validation loss)" if kept == 0 else "")
        capped = cap_note(rows, tune.training, "fine_tune")
        if capped:
            log.warning("fine-tune: %s", capped)
        if tune.blend < 1 and kept != 0:
            with setup.scope():
                blend_weights(model.trainable_variables, start_weights, tune.blend)
            if validation is not None:
                blended = score(scorer or model, validation, tune.training.batch_size, setup.strategy)
            log.info("fine-tune: saving the weights %g of the way from the head's start to epoch %d's "
                     "(fine_tune.blend)%s", tune.blend, kept, "" if validation is None else
                     f": val_loss {blended['loss']:.4f}, val_accuracy {blended['accuracy']:.4f}")

    else:
        log.info("fine-tune: epochs 0: the head assembled on the backbone, untrained and unscored (it is the head "
                 "train-head scored, on the photos instead of the cached features; evaluate scores it on test)")

    save_model(model, MODEL, classes)
    write_history(FINE_TUNE_REPORTS / HISTORY, rows)
    plot_history(rows, FINE_TUNE_REPORTS / CURVES, f"Fine-tuning {choice.spec.name}")
    # The weights kept are those of the best row, whose validation scores are the model's as saved, unless
    # fine_tune.blend moved them back toward the start and they were scored again.
    kept = next((row for row in rows if row["epoch"] == best_epoch(rows)), {}) if validation is not None else {}
    if blended is not None:
        kept = {"val_accuracy": blended["accuracy"], "val_loss": blended["loss"]}
    write_json(FINE_TUNE_REPORTS / STAGE_METRICS, {
        "val_accuracy": kept.get("val_accuracy"),
        "val_loss": kept.get("val_loss"),
        "best_epoch": best_epoch(rows),
        # How far the saved weights lie from the head's start toward the kept epoch's (none: the start kept).
        "blend": tune.blend if best_epoch(rows) != 0 else None,
        "epochs_run": sum(1 for row in rows if row["epoch"] > 0),
        "trainable_backbone_layers": len(unfrozen) if tune.training.epochs else 0,
    })


if __name__ == "__main__":
    run_stage("fine-tune", main)
