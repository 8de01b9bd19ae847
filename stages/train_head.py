"""train-head: train the classifier head on the cached bottleneck features (seconds, not minutes).

With ``head.search: N`` it tries N settings (the params as written, then N - 1 drawn around them: learning
rate, dropout, hidden width, label smoothing, weight decay), each trained with early stopping, and keeps the
one with the lowest validation cross-entropy.

Reads params: seed, head.*, strategy, mixed_precision.
Writes: models/head.keras (+ classes), reports/head/{history.csv,metrics.json,curves.png,search.csv}; the
metrics hold the head's validation figures, its accuracy on the cached test features (so every run shows what
fine-tuning added) and the setting kept; search.csv holds every trial (one row without a search).
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.warm import hand_over

hand_over(__name__, __file__)  # into a fork of the warm server that has TensorFlow imported, when one can serve

import numpy as np

from transfer.errors import ParamError
from transfer.io import write_csv, write_json
from transfer.layout import CURVES, FEATURES, HEAD_MODEL, HEAD_REPORTS, HISTORY, SEARCH, STAGE_METRICS
from transfer.model.classifier import save_model
from transfer.model.distribute import runtime
from transfer.model.features import TRAIN_VIEWS, FeatureStore
from transfer.model.heads import build_head, search_settings, setting_row
from transfer.model.scoring import plain_scores, score
from transfer.model.stopping import best_epoch, cap_note
from transfer.model.training import class_weights, compile_with, fit, set_determinism, write_history
from transfer.params import Params
from transfer.report.figures import plot_history
from transfer.schema import DistributeParams, HeadParams, read_distribute, read_head
from transfer.stage import run_stage

log = logging.getLogger("train-head")


def parse_params(params: Params) -> tuple[int, HeadParams, DistributeParams]:
    return params.seed(), read_head(params), read_distribute(params)


def as_training_arrays(store: FeatureStore, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features as float32, one-hot targets, and the integer labels of one split."""
    features, labels = store.load(split)
    return np.asarray(features, dtype=np.float32), np.eye(len(store.classes), dtype=np.float32)[labels], labels


def main() -> None:
    seed, head, distribute = parse_params(Params.load())
    setup = runtime(distribute)
    store = FeatureStore(FEATURES)
    x_train, y_train, train_labels = as_training_arrays(store, "train")
    if TRAIN_VIEWS in store.meta["counts"]:
        # features.train_views: the augmented copies train beside the images (class weights count them all).
        x_views, y_views, view_labels = as_training_arrays(store, TRAIN_VIEWS)
        log.info("train-head: %d training images and %d augmented copies of them", len(x_train), len(x_views))
        x_train, y_train = np.concatenate([x_train, x_views]), np.concatenate([y_train, y_views])
        train_labels = np.concatenate([train_labels, view_labels])
    x_val, y_val, val_labels = as_training_arrays(store, "val")
    validation = (x_val, y_val) if len(x_val) else None
    if head.search > 1 and validation is None:
        raise ParamError(f"head.search = {head.search} is invalid here: the search chooses on the validation "
                         "split, and split.val is 0; set head.search to 0 or split.val above 0")
    weights = class_weights(train_labels, len(store.classes), head.training.class_weight)
    settings = search_settings(head, head.search, seed)
    trials, best = [], None
    for number, setting in enumerate(settings):
        set_determinism(seed)
        with setup.scope():
            model = build_head(x_train.shape[1], len(store.classes), setting.hidden, setting.dropout,
                               setting.batchnorm)
            compile_with(model, setting.training, train_examples=len(x_train))
        log.info("train-head: %slr %g, batch %d, up to %d epochs on %d %s features",
                 f"trial {number + 1}/{len(settings)}: {setting_row(setting)}; " if len(settings) > 1 else "",
                 setting.training.lr, setting.training.batch_size, setting.training.epochs, len(x_train),
                 store.meta["backbone"])
        rows = fit(model, (x_train, y_train), validation, setting.training, weights, shuffle_seed=seed,
                   strategy=setup.strategy)
        judged = plain_scores(model, x_val, val_labels) if validation is not None else {}
        trials.append({"trial": number, **setting_row(setting), "epochs_run": len(rows),
                       "best_epoch": best_epoch(rows), "val_loss": judged.get("loss"),
                       "val_accuracy": judged.get("accuracy"), "kept": 0})
        # The lowest validation cross-entropy wins; the params as written (trial 0) win ties.
        if best is None or (judged and judged["loss"] < trials[best[0]]["val_loss"]):
            best = (number, model, rows, setting)
    chosen, model, rows, setting = best
    trials[chosen]["kept"] = 1
    if len(settings) > 1:
        log.info("train-head: kept trial %d of %d: %s (validation cross-entropy %.4f)", chosen + 1, len(settings),
                 setting_row(setting), trials[chosen]["val_loss"])

    save_model(model, HEAD_MODEL, store.classes)
    write_history(HEAD_REPORTS / HISTORY, rows)
    write_csv(HEAD_REPORTS / SEARCH, list(trials[0]), ([trial[key] for key in trials[0]] for trial in trials))
    plot_history(rows, HEAD_REPORTS / CURVES, f"Head on cached {store.meta['backbone']} features")
    scored = score(model, validation or (x_train, y_train), setting.training.batch_size, setup.strategy)
    # The head alone on the cached test features: beside reports/metrics.json, what fine-tuning added.
    x_test, y_test, _ = as_training_arrays(store, "test")
    tested = score(model, (x_test, y_test), setting.training.batch_size, setup.strategy) if len(x_test) else {}
    kept = best_epoch(rows)
    log.info("train-head: kept epoch %d of %d: val_accuracy %.4f, val_loss %.4f%s", kept, len(rows),
             scored["accuracy"], scored["loss"],
             f"; test_accuracy {tested['accuracy']:.4f} (head alone, cached features)" if tested else "")
    capped = cap_note(rows, setting.training, "head")
    if capped:
        log.warning("train-head: %s", capped)
    write_json(HEAD_REPORTS / STAGE_METRICS, {
        "val_accuracy": scored["accuracy"],
        "val_loss": scored["loss"],
        "test_accuracy": tested.get("accuracy"),
        "test_loss": tested.get("loss"),
        "best_epoch": kept,
        "epochs_run": len(rows),
        # The setting kept (the params as written, unless head.search found a better one), as numbers.
        "search_trials": len(settings),
        "chosen_trial": chosen,
        "chosen_lr": setting.training.lr,
        "chosen_dropout": setting.dropout,
        "chosen_hidden_width": setting.hidden[0] if setting.hidden else 0,
        "chosen_label_smoothing": setting.training.label_smoothing,
        "chosen_weight_decay": trials[chosen]["weight_decay"],
    })


if __name__ == "__main__":
    run_stage("train-head", main)
