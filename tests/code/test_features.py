"""The bottleneck cache: streamed extraction round-trips, in file order, whole or not at all."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from transfer.data.pipeline import image_dataset
from transfer.errors import DataError, ParamError
from transfer.model.backbones import build_feature_extractor
from transfer.model.features import FeatureStore, extract_features
from transfer.model.registry import resolve
from transfer.schema import BackboneParams

SIZE = (32, 32)


@pytest.fixture(scope="module")
def extractor():
    return build_feature_extractor(resolve(BackboneParams("mobilenetv2_0.35", "none", SIZE)))


@pytest.fixture
def splits(shapes_folder):
    paths = sorted(str(path) for path in shapes_folder.rglob("*.*"))
    labels = np.asarray([["circle", "square", "triangle"].index(p.split("/")[-2]) for p in paths], dtype=np.int32)
    return {"train": (paths[::2], labels[::2]), "val": (paths[1::4], labels[1::4]), "test": ([], labels[:0])}


def test_features_round_trip_and_match_the_model(extractor, splits, tmp_path):
    meta = {"backbone": "mobilenetv2_0.35", "classes": ["circle", "square", "triangle"]}
    stats = extract_features(extractor, SIZE, splits, tmp_path / "features", batch_size=7, dtype="float16", meta=meta)
    assert stats["images"] == len(splits["train"][0]) + len(splits["val"][0])
    store = FeatureStore(tmp_path / "features")
    assert store.meta["feature_dim"] == 1280 and store.meta["counts"] == {"train": 30, "val": 15, "test": 0}
    assert store.classes == meta["classes"]
    features, labels = store.load("train")
    assert features.shape == (30, 1280) and features.dtype == np.float16
    np.testing.assert_array_equal(labels, splits["train"][1])
    expected = extractor.predict(image_dataset(splits["train"][0], SIZE, 30), verbose=0)
    np.testing.assert_allclose(features.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert store.load("test")[0].shape == (0, 1280)


def test_a_failed_extraction_leaves_the_previous_cache_untouched(extractor, splits, tmp_path):
    target = tmp_path / "features"
    extract_features(extractor, SIZE, splits, target, batch_size=8, dtype="float32", meta={"classes": []})
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    broken = dict(splits, val=([*splits["val"][0], str(tmp_path / "gone.jpg")], np.zeros(16, dtype=np.int32)))
    with pytest.raises(tf.errors.NotFoundError):
        extract_features(extractor, SIZE, broken, target, batch_size=8, dtype="float16", meta={"classes": []})
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["features"], "no temporary left behind"


def test_a_missing_cache_says_which_stage_to_run(tmp_path):
    with pytest.raises(DataError, match="run the extract-features stage"):
        FeatureStore(tmp_path)


def test_extraction_is_deterministic(extractor, splits, tmp_path):
    for name in ("a", "b"):
        extract_features(extractor, SIZE, splits, tmp_path / name, batch_size=16, dtype="float16", meta={})
    for file in ("train_features.npy", "val_features.npy"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    shutil.rmtree(tmp_path / "b")


def _pixels(size: int = 8):
    """A stand-in extractor whose features are the image's pixels, downsampled: any random change shows."""
    import keras

    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Flatten()(keras.layers.Resizing(size, size)(inputs)))


def test_augmented_copies_of_the_training_images_are_extracted_beside_them(splits, tmp_path):
    from transfer.model.features import TRAIN_VIEWS, changing_extractor
    from transfer.schema import AugmentParams

    plain = _pixels()
    change = AugmentParams(flip=True, rotation=0.1, zoom=0.2, contrast=0.2, brightness=0.0)
    for folder in ("a", "b"):
        extract_features(plain, SIZE, splits, tmp_path / folder, batch_size=8, dtype="float32", meta={"classes": []},
                         views=(changing_extractor(plain, change, seed=3), 2))
    store = FeatureStore(tmp_path / "a")
    train, labels = store.load("train")
    copies, copy_labels = store.load(TRAIN_VIEWS)
    assert store.meta["counts"][TRAIN_VIEWS] == 60 and copies.shape == (60, 192)
    np.testing.assert_array_equal(copy_labels, np.tile(labels, 2))
    first, second = np.asarray(copies[:30]), np.asarray(copies[30:])
    # Changed by extraction, which calls the model for inference, and drawn anew for each copy.
    assert np.abs(first - train).mean() > 1 and np.abs(second - first).mean() > 1
    # Still the same image: closer to its own clean features than to any other image's.
    distances = np.linalg.norm(first[:, None, :] - np.asarray(train)[None], axis=2)
    assert (distances.argmin(axis=1) == np.arange(30)).mean() > 0.5, "chance is 1 in 30"
    np.testing.assert_array_equal(copies, FeatureStore(tmp_path / "b").load(TRAIN_VIEWS)[0]), "seeded"
    assert store.load("val")[0].shape == (15, 192), "validation stays as it is"


def test_copies_without_a_random_change_are_refused():
    from transfer.model.features import changing_extractor
    from transfer.schema import AugmentParams

    with pytest.raises(ParamError, match="features.train_views needs at least one random change"):
        changing_extractor(_pixels(), AugmentParams(False, 0.0, 0.0, 0.0, 0.0), seed=0)
