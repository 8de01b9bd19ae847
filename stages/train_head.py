"""train-head: train the classifier head on the cached bottleneck features (seconds, not minutes).

Reads params: seed, head.*, strategy, mixed_precision.
Writes: models/head.keras (+ classes), reports/head/{history.csv,metrics.json,curves.png}; the metrics hold
the head's validation figures and its accuracy on the cached test features, so every run shows what
fine-tuning added.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

import numpy as np

from transfer.distribute import runtime
from transfer.features import FeatureStore
from transfer.heads import build_head
from transfer.io import write_json
from transfer.layout import CURVES, FEATURES, HEAD_MODEL, HEAD_REPORTS, HISTORY, STAGE_METRICS
from transfer.models import save_model
from transfer.params import DistributeParams, HeadParams, Params, read_distribute, read_head
from transfer.reports import plot_history
from transfer.stage import run_stage
from transfer.training import (
    best_epoch,
    class_weights,
    compile_with,
    fit,
    score,
    set_determinism,
    write_history,
)

log = logging.getLogger("train-head")


def parse_params(params: Params) -> tuple[int, HeadParams, DistributeParams]:
    return params.int("seed"), read_head(params), read_distribute(params)


def as_training_arrays(store: FeatureStore, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features as float32, one-hot targets, and the integer labels of one split."""
    features, labels = store.load(split)
    return np.asarray(features, dtype=np.float32), np.eye(len(store.classes), dtype=np.float32)[labels], labels


def main() -> None:
    seed, head, distribute = parse_params(Params.load())
    setup = runtime(distribute)
    set_determinism(seed)
    store = FeatureStore(FEATURES)
    x_train, y_train, train_labels = as_training_arrays(store, "train")
    x_val, y_val, _ = as_training_arrays(store, "val")
    validation = (x_val, y_val) if len(x_val) else None

    with setup.scope():
        model = build_head(x_train.shape[1], len(store.classes), head.hidden, head.dropout, head.batchnorm)
        compile_with(model, head.training, train_examples=len(x_train))
    weights = class_weights(train_labels, len(store.classes), head.training.class_weight)
    log.info("train-head: lr %g, batch %d, up to %d epochs on %d %s features", head.training.lr,
             head.training.batch_size, head.training.epochs, len(x_train), store.meta["backbone"])
    rows = fit(model, (x_train, y_train), validation, head.training, weights, shuffle_seed=seed,
               strategy=setup.strategy)

    save_model(model, HEAD_MODEL, store.classes)
    write_history(HEAD_REPORTS / HISTORY, rows)
    plot_history(rows, HEAD_REPORTS / CURVES, f"Head on cached {store.meta['backbone']} features")
    scored = score(model, validation or (x_train, y_train), head.training.batch_size, setup.strategy)
    # The head alone on the cached test features: beside reports/metrics.json, what fine-tuning added.
    x_test, y_test, _ = as_training_arrays(store, "test")
    tested = score(model, (x_test, y_test), head.training.batch_size, setup.strategy) if len(x_test) else {}
    kept = best_epoch(rows)
    log.info("train-head: kept epoch %d of %d: val_accuracy %.4f, val_loss %.4f%s", kept, len(rows),
             scored["accuracy"], scored["loss"],
             f"; test_accuracy {tested['accuracy']:.4f} (head alone, cached features)" if tested else "")
    write_json(HEAD_REPORTS / STAGE_METRICS, {
        "val_accuracy": scored["accuracy"],
        "val_loss": scored["loss"],
        "test_accuracy": tested.get("accuracy"),
        "test_loss": tested.get("loss"),
        "best_epoch": kept,
        "epochs_run": len(rows),
    })


if __name__ == "__main__":
    run_stage("train-head", main)
