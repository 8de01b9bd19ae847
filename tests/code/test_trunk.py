"""The trunk cache: the backbone cut in two computes what it computed whole, extract-features writes the trunk's
output in the pass that makes the features, and training the top from that cache trains the saved model."""

import json

import numpy as np
import pytest

from transfer.errors import DataError
from transfer.model.backbones import build_views
from transfer.model.classifier import assemble_classifier, backbone_of, unfreeze_top
from transfer.model.features import FeatureStore, extract_features
from transfer.model.heads import build_head
from transfer.model.registry import resolve
from transfer.model.rows import RowFile
from transfer.model.scoring import score
from transfer.model.training import compile_for_training, fit, set_determinism
from transfer.model.trunk import (
    TrunkCache,
    boundary_layer,
    check_disk,
    classifiers,
    plan_trunk,
    split_backbone,
    trunk_on_images,
)
from transfer.schema import AugmentParams, BackboneParams

SIZE = (32, 32)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, *SIZE, 3)).astype("float32")


@pytest.mark.parametrize(
    ("name", "layer", "first", "cut"),
    [
        ("mobilenetv2_0.35", None, "Conv_1", "Conv_1"),  # after the last block: the cut stays where asked
        # Inside a residual block: down to the block's first layer, so only its input crosses the cut.
        ("mobilenetv2_0.35", None, "block_15_expand_BN", "block_15_expand"),
        ("resnet50", None, "conv5_block3_2_conv", "conv5_block3_1_conv"),
        ("efficientnetb0", None, "block7a_expand_conv", "block7a_expand_conv"),  # squeeze-and-excitation, dropout
        ("vgg16", None, "block5_conv1", "block5_conv1"),
        # A backbone cut at a named layer (features.layer): the trunk splits what is left, pooled as a whole.
        ("vgg16", "block3_pool", "block3_conv2", "block3_conv2"),
        ("resnet50", "conv4_block6_out", "conv4_block6_2_conv", "conv4_block6_1_conv"),
    ],
)
def test_trunk_then_top_is_the_backbone(name, layer, first, cut):
    choice = resolve(BackboneParams(name, "none", SIZE, layer))
    single = build_views(choice, False)[0]
    backbone = backbone_of(single)
    split = split_backbone(backbone, first)
    assert split.first == cut
    images = _images(4)
    whole = np.asarray(single(images))
    cut = np.asarray(split.top(trunk_on_images(split, single, choice.spec.preprocessing)(images)))
    np.testing.assert_allclose(cut, whole, rtol=1e-4, atol=1e-5)
    assert set(map(id, split.top.weights)) <= set(map(id, backbone.weights)), "the top shares the backbone's layers"


def _write_images(folder, count: int, seed: int, bright: bool = False) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(_images(count, seed) * 0.3 + (170 if bright else 0)):
        path = folder / f"{seed}_{index}.png"
        Image.fromarray(image.astype("uint8")).save(path)
        paths.append(str(path))
    return paths


NO_CHANGE = AugmentParams(flip=True, rotation=0.1, zoom=0.0, contrast=0.0, brightness=0.0)


def _extract(tmp_path, choice, unfreeze, copies: int = 0, mirror: bool = True, splits=None):
    """extract-features' own calls on a few generated images: (the features folder, the models used)."""
    extractor, single = build_views(choice, mirror)
    splits = splits or {"train": (_write_images(tmp_path / "train", 10, 1), np.arange(10) % 2),
                        "val": (_write_images(tmp_path / "val", 6, 2), np.arange(6) % 2),
                        "test": (_write_images(tmp_path / "test", 4, 3), np.arange(4) % 2)}
    plan, said = plan_trunk(single, choice.spec.preprocessing, unfreeze, mirror, copies, NO_CHANGE, 0,
                            {"backbone_sha256": "digest"})
    extract_features(extractor, choice.image_size, splits, tmp_path / "features", 4, "float32", {"classes": ["a", "b"]},
                     trunk=plan)
    return tmp_path / "features", extractor, single, splits, plan, said


def test_extraction_writes_the_trunk_of_every_training_and_validation_image_and_its_mirror(tmp_path):
    choice = resolve(BackboneParams("vgg16", "none", SIZE))
    folder, extractor, single, splits, plan, said = _extract(tmp_path, choice, 5, copies=2)
    assert "below block5_conv1" in said and "2 augmented copies" in said
    split = split_backbone(backbone_of(single), "block5_conv1")
    on_images = trunk_on_images(split, single, choice.spec.preprocessing)
    store, cache = FeatureStore(folder), TrunkCache(folder)
    assert cache.counts == {"train": 10, "val": 6} and cache.copies == 2 and not (folder / "trunk/test.npy").exists()
    for name in ("train", "val"):
        from transfer.data.pipeline import image_dataset

        images = np.concatenate(list(image_dataset(splits[name][0], SIZE, 16)))
        rows = np.load(folder / "trunk" / f"{name}.npy")
        count = len(images)
        assert rows.shape == ((4 if name == "train" else 2) * count, *cache.shape)
        np.testing.assert_allclose(rows[:count], on_images(images), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(rows[count:2 * count], on_images(images[:, :, ::-1]), rtol=1e-4, atol=1e-4)
        # The features of the same pass: the top on those trunk outputs, mirror-averaged as the extractor does.
        np.testing.assert_allclose(store.load(name)[0], extractor(images), rtol=1e-4, atol=1e-4)
        if name == "train":
            copies = rows[2 * count:]
            assert not np.allclose(copies[:count], rows[:count], atol=1e-3), "changed copies, not the images again"
            assert not np.allclose(copies[:count], copies[count:], atol=1e-3), "a new draw for each copy"
    assert json.loads((folder / "trunk/meta.json").read_text())["first_layer"] == "block5_conv1"


def test_no_trunk_cache_when_nothing_is_frozen_or_the_boundary_does_not_fit():
    choice = resolve(BackboneParams("vgg16", "none", SIZE))
    single = build_views(choice, False)[1]
    for unfreeze, expected in (("all", "leaves no layer frozen"), (500, "this backbone has 19 layers")):
        plan, said = plan_trunk(single, choice.spec.preprocessing, unfreeze, False, 0, NO_CHANGE, 0, {})
        assert plan is None and expected in said
    assert boundary_layer(backbone_of(single), 0) == backbone_of(single).operations[-1].name


def test_fine_tune_refuses_a_cache_made_for_another_boundary_in_one_line(tmp_path):
    choice = resolve(BackboneParams("vgg16", "none", SIZE))
    folder = _extract(tmp_path, choice, 5)[0]
    cache = TrunkCache(folder)
    cache.check(5, "block5_conv1", "digest", cache.shape)
    with pytest.raises(DataError, match=r"made for fine_tune.unfreeze = 5 \(the top from block5_conv1\), not 9") \
            as error:
        cache.check(9, "block4_conv3", "digest", cache.shape)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="other backbone weights"):
        cache.check(5, "block5_conv1", "another", cache.shape)
    with pytest.raises(DataError, match="holds no trunk cache"):
        TrunkCache(tmp_path / "nowhere")


def test_a_cache_the_disk_cannot_hold_is_refused_before_it_is_made(tmp_path):
    check_disk(tmp_path / "not/yet", 1024)
    with pytest.raises(DataError, match=r"would take 931322574.6 GiB .* lower features.trunk_views"):
        check_disk(tmp_path, 10**18)


def test_the_top_learns_from_the_cache_and_the_saved_model_moves_with_it(tmp_path):
    set_determinism(0)
    # VGG16: random weights and no BatchNormalization, so its random features are not degenerate.
    choice = resolve(BackboneParams("vgg16", "none", SIZE))
    # A task the random features can tell: bright images against dark ones.
    paths = [*_write_images(tmp_path / "dark", 16, 1), *_write_images(tmp_path / "bright", 16, 2, bright=True)]
    labels = np.repeat([0, 1], 16)
    folder, model_views, single, _, _, _ = _extract(tmp_path, choice, 5, splits={"train": (paths, labels),
                                                                                  "val": (paths, labels)})
    head = build_head(model_views.output_shape[-1], 2, [], 0.0, False)
    model = assemble_classifier(model_views, head)
    unfrozen = unfreeze_top(model, 5)
    assert unfrozen[0] == "block5_conv1" == boundary_layer(backbone_of(model), 5)
    split = split_backbone(backbone_of(model), unfrozen[0])
    trained, scorer = classifiers(split, head, mirror=True)
    for compiled in (trained, scorer, model):
        compile_for_training(compiled, 1e-3)
    cache = TrunkCache(folder)
    targets = np.eye(2, dtype="float32")[labels]
    validation = cache.validation(targets, 8, mirror=True)
    from transfer.data.pipeline import image_dataset

    images = image_dataset(paths, SIZE, 8, labels, 2)
    before = score(scorer, validation, 8)
    np.testing.assert_allclose(before["loss"], score(model, images, 8)["loss"], rtol=1e-4)
    rows = fit(trained, cache.training(targets, 8, seed=0, flip=True), validation, _training(epochs=5), None,
               start=before["loss"], scorer=scorer)
    after = score(scorer, validation, 8)
    assert after["loss"] < before["loss"] and len(rows) == 5
    np.testing.assert_allclose(after["loss"], score(model, images, 8)["loss"], rtol=1e-4)
def _training(epochs: int):
    from transfer.schema import TrainingParams

    return TrainingParams(epochs=epochs, lr=1e-3, batch_size=8, patience=5, label_smoothing=0.0,
                          class_weight="none", optimizer="adam", weight_decay=0.0, schedule="constant",
                          warmup_epochs=0)


def _fake_cache(folder, count: int, copies: int) -> TrunkCache:
    """A trunk cache whose every row holds its own row number: view v of image i holds v * count + i."""
    (folder / "trunk").mkdir(parents=True)
    views = 2 + copies
    with RowFile.create(folder / "trunk/train.npy", (views * count, 1), "float16") as rows:
        rows.write(np.arange(views * count)[::-1], np.arange(views * count, dtype="float16")[::-1, None])
    with RowFile.create(folder / "trunk/val.npy", (2 * 5, 1), "float16") as rows:
        rows.write(np.arange(10), np.arange(10, dtype="float16")[:, None])
    (folder / "trunk/meta.json").write_text(json.dumps({"shape": [1], "copies": copies,
                                                         "counts": {"train": count, "val": 5}}))
    return TrunkCache(folder)


def test_views_are_drawn_per_image_each_epoch_and_seeded(tmp_path):
    count = 64
    cache = _fake_cache(tmp_path, count, copies=2)
    targets = np.eye(2, dtype="float32")[np.arange(count) % 2]

    def epoch(dataset):
        drawn = [(np.asarray(x)[:, 0], np.asarray(y)) for x, y in dataset]
        return np.concatenate([x for x, _ in drawn]).astype(int), np.concatenate([y for _, y in drawn])

    dataset = cache.training(targets, 16, seed=3, flip=True)
    assert int(dataset.cardinality()) == 4
    (first, first_targets), (second, _) = epoch(dataset), epoch(dataset)
    assert sorted(first % count) == list(range(count)), "each image once an epoch"
    np.testing.assert_array_equal(first_targets, targets[first % count]), "each with its own label"
    assert set(first // count) == {0, 1, 2, 3} and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, epoch(cache.training(targets, 16, seed=3, flip=True))[0])
    no_flip = epoch(cache.training(targets, 16, seed=3, flip=False))[0]
    assert set(no_flip // count) == {0, 2, 3}, "no mirror drawn without flips"
    plain = _fake_cache(tmp_path / "plain", count, copies=0)
    assert set(epoch(plain.training(targets, 16, seed=3, flip=False))[0] // count) == {0}


def test_validation_comes_in_order_with_its_mirrors(tmp_path):
    cache = _fake_cache(tmp_path, 8, copies=0)
    targets = np.eye(2, dtype="float32")[np.arange(5) % 2]
    batches = list(cache.validation(targets, 2, mirror=True))
    assert [np.asarray(given)[:, 0].tolist() for (given, _), _ in batches] == [[0, 1], [2, 3], [4]]
    assert [np.asarray(mirrored)[:, 0].tolist() for (_, mirrored), _ in batches] == [[5, 6], [7, 8], [9]]
    assert [np.asarray(x)[:, 0].tolist() for x, _ in cache.validation(targets, 4, mirror=False)] == [[0, 1, 2, 3], [4]]


def test_row_files_are_npy_files_written_by_position_and_read_back(tmp_path):
    path = tmp_path / "rows.npy"
    expected = np.random.default_rng(0).normal(size=(9, 2, 3)).astype("float32")
    with RowFile.create(path, expected.shape, "float32") as rows:
        rows.write(np.array([3, 4, 5, 0, 1, 2]), expected[[3, 4, 5, 0, 1, 2]])
        rows.write(np.array([8, 6, 7]), expected[[8, 6, 7]])
        with pytest.raises(IndexError):
            rows.write(np.array([9]), expected[:1])
    np.testing.assert_array_equal(np.load(path), expected)
    with RowFile.open(path) as rows:
        np.testing.assert_array_equal(rows.read(np.array([7, 0, 7])), expected[[7, 0, 7]])
        np.testing.assert_array_equal(rows.read_range(6, 20), expected[6:])


def test_copies_with_no_random_change_to_make_them_are_refused_naming_the_key():
    from transfer.errors import ParamError

    choice = resolve(BackboneParams("vgg16", "none", SIZE))
    single = build_views(choice, False)[1]
    unchanged = AugmentParams(flip=False, rotation=0.0, zoom=0.0, contrast=0.0, brightness=0.0)
    with pytest.raises(ParamError, match="features.trunk_views needs at least one random change"):
        plan_trunk(single, choice.spec.preprocessing, 5, False, 2, unchanged, 0, {})


def test_the_keras_internals_the_split_relies_on():
    """trunk.split_backbone reads a layer's first inbound node, a tensor's maker and a node's arguments, which
    Keras keeps private: this says at once if a Keras release moves them, even for a layer called twice."""
    import keras

    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, name="dense")
    hidden = dense(inputs)
    outputs = keras.layers.Add(name="add")([hidden, hidden])
    model = keras.Model(inputs, outputs)
    model(keras.Input((4,)))  # called again: a second inbound node on every layer, as the mirror views do
    node = model.get_layer("add")._inbound_nodes[0]
    assert [id(tensor) for tensor in node.input_tensors] == [id(hidden), id(hidden)]
    assert hidden._keras_history.operation is dense
    replacement = keras.Input((3,))
    args, kwargs = node.arguments.fill_in({id(hidden): replacement})
    assert all(tensor is replacement for tensor in args[0]) and kwargs == {}

