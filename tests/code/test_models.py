"""Fine-tuning unfreezes exactly what was asked and nothing moves BatchNorm; the saved model needs only Keras."""

import io
import json
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from transfer.errors import ParamError
from transfer.model.backbones import build_feature_extractor
from transfer.model.classifier import assemble_classifier, backbone_of, input_size, load_model, save_model, unfreeze_top
from transfer.model.heads import build_head
from transfer.model.registry import resolve
from transfer.model.training import compile_for_training, set_determinism
from transfer.schema import BackboneParams


def _classifier(name="mobilenetv2_0.35", size=(32, 32), batchnorm=True):
    extractor = build_feature_extractor(resolve(BackboneParams(name, "none", size)))
    head = build_head(extractor.output_shape[-1], 3, [8], 0.1, batchnorm)
    return assemble_classifier(extractor, head)


def _is_batchnorm(layer):
    return type(layer).__name__ == "BatchNormalization"


def test_unfreeze_top_trains_exactly_the_top_layers_but_no_batchnorm():
    model = _classifier()
    unfrozen = unfreeze_top(model, 10)
    layers = backbone_of(model).layers[1:]
    top = layers[-10:]
    assert unfrozen == [layer.name for layer in top if not _is_batchnorm(layer)]
    assert all(layer.trainable == (layer in top and not _is_batchnorm(layer)) for layer in layers)
    head = model.get_layer("head")
    assert all(layer.trainable != _is_batchnorm(layer) for layer in head.layers[1:])


def test_unfreeze_all_trains_every_backbone_layer_but_batchnorm():
    model = _classifier()
    unfrozen = unfreeze_top(model, "all")
    layers = backbone_of(model).layers[1:]
    assert unfrozen == [layer.name for layer in layers if not _is_batchnorm(layer)]
    assert all(layer.trainable != _is_batchnorm(layer) for layer in layers)
    assert not any(layer.trainable_weights for layer in model.layers if layer.name.startswith("preprocess"))


def test_unfreeze_from_a_named_layer():
    model = _classifier()
    unfrozen = unfreeze_top(model, "block_16_expand")
    names = [layer.name for layer in backbone_of(model).layers[1:]]
    expected = [layer.name for layer in backbone_of(model).layers[names.index("block_16_expand") + 1 :]
                if not _is_batchnorm(layer)]
    assert unfrozen == expected and unfrozen[0] == "block_16_expand" and "out_relu" in unfrozen


@pytest.mark.parametrize(("value", "message"), [(10_000, "this backbone has"), ("block_99", "such as")])
def test_bad_unfreeze_values_name_the_param(value, message):
    with pytest.raises(ParamError, match=f"fine_tune.unfreeze = .*{message}"):
        unfreeze_top(_classifier(), value)


def test_fixed_preprocessing_stays_frozen():
    model = _classifier("vgg16")
    unfreeze_top(model, 5)
    assert not model.get_layer("preprocess_caffe").trainable


def test_a_training_step_leaves_batchnorm_and_frozen_layers_untouched():
    set_determinism(0)
    model = _classifier()
    unfreeze_top(model, 5)
    compile_for_training(model, 1e-2, 0.0)
    backbone = backbone_of(model)
    batchnorms = [layer for layer in backbone.layers if _is_batchnorm(layer)]
    frozen_conv, trained_conv = backbone.get_layer("Conv1"), backbone.get_layer("Conv_1")
    before = {
        "bn": [np.array(w) for layer in batchnorms for w in layer.weights],
        "frozen": np.array(frozen_conv.kernel),
        "trained": np.array(trained_conv.kernel),
    }
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype("float32")
    targets = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]
    model.fit(images, targets, epochs=2, batch_size=8, verbose=0)
    for old, layer_weight in zip(before["bn"], [w for layer in batchnorms for w in layer.weights], strict=True):
        np.testing.assert_array_equal(old, np.array(layer_weight), err_msg="a BatchNorm weight or statistic moved")
    np.testing.assert_array_equal(before["frozen"], np.array(frozen_conv.kernel))
    assert not np.array_equal(before["trained"], np.array(trained_conv.kernel)), "the unfrozen top did not train"


def test_the_saved_model_loads_with_plain_keras_and_takes_raw_pixels(tmp_path):
    model = _classifier(size=(40, 40))
    compile_for_training(model, 1e-3, 0.0)
    model.fit(np.zeros((2, 40, 40, 3)), np.eye(3)[[0, 1]], verbose=0)  # the optimizer now has state
    classes = ["circle", "square", "triangle"]
    save_model(model, tmp_path / "model.keras", classes)
    assert json.loads((tmp_path / "model.classes.json").read_text()) == classes
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 57, 63, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = np.asarray(model(images, training=False))
    script = (
        "import sys, numpy as np, keras\n"
        "model = keras.saving.load_model('model.keras')\n"
        "np.save('out.npy', np.asarray(model(np.load('images.npy'))))\n"
        "assert not any(name.startswith('transfer') for name in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, env={"PATH": "/usr/bin:/bin"})
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-6)
    loaded, loaded_classes = load_model(tmp_path / "model.keras")
    assert loaded_classes == classes and input_size(loaded) == (40, 40)
    with zipfile.ZipFile(tmp_path / "model.keras") as bundle, bundle.open("model.weights.h5") as weights:
        assert "optimizer" not in h5py.File(io.BytesIO(weights.read()), "r"), "no optimizer state in the artifact"


def test_the_same_model_saved_twice_has_the_same_bytes(tmp_path, monkeypatch):
    import time

    model = _classifier(size=(40, 40))
    save_model(model, tmp_path / "first.keras", ["a", "b", "c"])
    # Keras stamps the time of saving into the file, and zip members carry theirs: a later clock.
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda seconds=None: time.gmtime(later))
    save_model(model, tmp_path / "second.keras", ["a", "b", "c"])
    assert (tmp_path / "first.keras").read_bytes() == (tmp_path / "second.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "first.keras") as bundle:
        assert {info.date_time for info in bundle.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert "date_saved" not in json.loads(bundle.read("metadata.json"))


def test_augmentation_changes_raw_pixels_within_their_range():
    from transfer.data.pipeline import augmenter
    from transfer.schema import AugmentParams

    assert augmenter(AugmentParams(False, 0.0, 0.0, 0.0, 0.0), seed=0) is None
    augment = augmenter(AugmentParams(True, 0.05, 0.15, 0.1, 0.1), seed=0)
    assert [type(layer).__name__ for layer in augment.layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast", "RandomBrightness"]
    images = np.random.default_rng(0).uniform(0, 255, size=(8, 32, 32, 3)).astype("float32")
    changed = np.asarray(augment(images, training=True))
    assert changed.shape == images.shape and not np.allclose(changed, images)
    assert changed.min() >= 0.0 and changed.max() <= 255.0, "the backbone's preprocessing expects [0, 255]"
    np.testing.assert_array_equal(np.asarray(augment(images, training=False)), images)
