"""Run by test_distribute.py in a fresh process: splits the CPU into two logical devices, then trains and
extracts under ``strategy: mirrored`` and on one device, and prints what it measured as one JSON line.

The CPU must be split before TensorFlow initialises its devices, which a pytest process has long done.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import make_shapes_dataset  # noqa: E402
from transfer.data.pipeline import array_dataset  # noqa: E402
from transfer.model.across_hosts import fit_across_hosts  # noqa: E402
from transfer.model.backbones import build_feature_extractor  # noqa: E402
from transfer.model.classifier import assemble_classifier, load_model, save_model, unfreeze_top  # noqa: E402
from transfer.model.distribute import runtime  # noqa: E402
from transfer.model.features import FeatureStore, extract_features  # noqa: E402
from transfer.model.heads import build_head  # noqa: E402
from transfer.model.registry import resolve  # noqa: E402
from transfer.model.training import compile_for_training, fit, set_determinism  # noqa: E402
from transfer.schema import BackboneParams, DistributeParams, TrainingParams  # noqa: E402

SIZE = (32, 32)
CLASSES = ["circle", "square", "triangle"]


def train_head(setup, features, targets, epochs):
    set_determinism(0)
    with setup.scope():
        head = build_head(features.shape[1], len(CLASSES), (16,), 0.0, False)
        compile_for_training(head, 1e-2, 0.0)
    training = TrainingParams(lr=1e-2, epochs=epochs, batch_size=16, patience=epochs, label_smoothing=0.0,
                              class_weight="none")
    # In a fixed order: the comparison is of the distributed arithmetic, not of two shuffles.
    rows = fit(head, array_dataset((features, targets), 16), None, training, None)
    return head, rows


def custom_loop_against_keras(mirrored, single, features, targets) -> list[list[dict]]:
    """The training loop used across hosts, on the two devices, against Keras' fit on one: class weights,
    label smoothing, validation and early stopping, in a fixed order. Returns both histories."""
    weights = {0: 1.0, 1: 2.0, 2: 0.5}
    training = TrainingParams(lr=1e-2, epochs=6, batch_size=16, patience=1, label_smoothing=0.1,
                              class_weight="balanced")
    histories = []
    for setup, loop in ((single, fit), (mirrored, fit_across_hosts)):
        set_determinism(0)
        with setup.scope():
            head = build_head(features.shape[1], len(CLASSES), (16,), 0.0, False)
            compile_for_training(head, 1e-2, 0.1)
        train = array_dataset((features[::2], targets[::2]), 16)
        validation = array_dataset((features[1::2], targets[1::2]), 16)
        if loop is fit:
            histories.append(fit(head, train, validation, training, weights))
        else:
            histories.append(fit_across_hosts(head, train, validation, training, weights, setup.strategy))
    return histories


def main(work: Path) -> dict:
    photos = make_shapes_dataset(work / "photos", per_class=15, size=40)
    paths = sorted(str(path) for path in photos.rglob("*.*"))
    labels = np.asarray([CLASSES.index(Path(path).parent.name) for path in paths], dtype=np.int32)
    choice = resolve(BackboneParams("mobilenetv2_0.35", "none", SIZE))
    mirrored = runtime(DistributeParams("mirrored", False))
    single = runtime(DistributeParams("default", False))
    result = {"replicas": mirrored.replicas, "distributed": mirrored.distributed, "chief": mirrored.chief,
              "devices": list(mirrored.strategy.extended.worker_devices)}

    # Extraction: 45 images in batches of 8, the last one short (5 images, split 3 + 2 over the replicas).
    splits = {"train": (paths, labels), "test": (paths[:7], labels[:7])}
    with mirrored.scope():
        extractor = build_feature_extractor(choice)
    extract_features(extractor, SIZE, splits, work / "mirrored", 8, "float32", {}, runtime=mirrored)
    extract_features(extractor, SIZE, splits, work / "single", 8, "float32", {})
    one, _ = FeatureStore(work / "single").load("train")
    two, two_labels = FeatureStore(work / "mirrored").load("train")
    result["features_max_difference"] = float(np.abs(np.asarray(one) - np.asarray(two)).max())
    result["features_labels_equal"] = bool((two_labels == labels).all())
    result["test_rows"] = int(FeatureStore(work / "mirrored").load("test")[0].shape[0])

    # The head: the same seed, data and global batch on two replicas and on one. A random backbone's features
    # barely tell the shapes apart, so the head learns from separable clusters instead.
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(len(labels), 24)) + 3 * np.eye(3, 24)[labels]).astype(np.float32)
    targets = np.eye(len(CLASSES), dtype=np.float32)[labels]
    head_two, rows_two = train_head(mirrored, features, targets, 8)
    head_one, rows_one = train_head(single, features, targets, 8)
    result["custom_loop_rows"] = custom_loop_against_keras(mirrored, single, features, targets)
    result["head_losses"] = [[row["loss"] for row in rows_one], [row["loss"] for row in rows_two]]
    result["head_probability_difference"] = float(np.abs(
        head_one.predict(features, verbose=0) - head_two.predict(features, verbose=0)).max())
    result["head_variables_mirrored"] = all(
        isinstance(weight.value, tf.distribute.DistributedValues) for weight in head_two.weights)
    result["head_accuracy"] = float((head_two.predict(features, verbose=0).argmax(1) == labels).mean())

    # Fine-tuning the top of the backbone with the head on two replicas, then saving the deployable model.
    with mirrored.scope():
        set_determinism(0)
        tuned = build_feature_extractor(choice)
        model = assemble_classifier(tuned, build_head(int(tuned.output_shape[-1]), 3, (), 0.0, False))
        unfrozen = unfreeze_top(model, 10)
        compile_for_training(model, 1e-4, 0.0)
    from transfer.data.pipeline import image_dataset

    dataset = image_dataset(paths, SIZE, 16, labels, len(CLASSES), shuffle_seed=0)
    training = TrainingParams(lr=1e-4, epochs=2, batch_size=16, patience=2, label_smoothing=0.0, class_weight="none")
    tuned_rows = fit(model, dataset, None, training, None)
    result["fine_tune_unfrozen"] = len(unfrozen)
    result["fine_tune_losses"] = [row["loss"] for row in tuned_rows]
    save_model(model, work / "model.keras", CLASSES)
    loaded, classes = load_model(work / "model.keras")
    probabilities = loaded.predict(image_dataset(paths[:5], SIZE, 5), verbose=0)
    result["loaded_classes"] = classes
    result["loaded_probability_sums"] = probabilities.sum(axis=1).round(4).tolist()
    result["mixed"] = mixed_precision(work, choice, paths, labels)
    return result


def mixed_precision(work: Path, choice, paths, labels) -> dict:
    """Mixed precision on the two replicas: float16 compute, float32 probabilities, a float32 file."""
    from transfer.data.pipeline import image_dataset

    setup = runtime(DistributeParams("mirrored", True))
    with setup.scope():
        set_determinism(0)
        extractor = build_feature_extractor(choice)
        model = assemble_classifier(extractor, build_head(int(extractor.output_shape[-1]), 3, (), 0.0, False))
        compile_for_training(model, 1e-3, 0.0)
    training = TrainingParams(lr=1e-3, epochs=1, batch_size=16, patience=1, label_smoothing=0.0, class_weight="none")
    rows = fit(model, image_dataset(paths, SIZE, 16, labels, 3, shuffle_seed=0), None, training, None)
    probabilities = model.predict(image_dataset(paths[:4], SIZE, 4), verbose=0)
    save_model(model, work / "mixed.keras", CLASSES)
    import keras

    keras.mixed_precision.set_global_policy("float32")
    loaded, _ = load_model(work / "mixed.keras")
    return {
        "policy": setup.policy,
        "feature_dtype": str(extractor.output.dtype),
        "probability_dtype": str(probabilities.dtype),
        "loss_finite": bool(np.isfinite(rows[0]["loss"])),
        "loaded_policies": sorted({layer.dtype_policy.name for layer in loaded.get_layer("backbone").layers}),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        print("RESULT " + json.dumps(main(Path(scratch))))
