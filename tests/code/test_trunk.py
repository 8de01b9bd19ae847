"""The cached-trunk fine-tune: the backbone cut in two computes what it computed whole, and training the top
from the cache trains the saved model."""

import numpy as np
import pytest

from transfer.backbones import build_views, resolve
from transfer.errors import ParamError
from transfer.heads import build_head
from transfer.models import assemble_classifier, backbone_of, unfreeze_top
from transfer.params import BackboneParams
from transfer.training import compile_for_training, fit, score, set_determinism
from transfer.trunk import (
    check_cache_size,
    classifiers,
    run_trunk,
    split_backbone,
    trunk_on_images,
    view_dataset,
)

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


def test_the_top_learns_from_the_cache_and_the_saved_model_moves_with_it():
    set_determinism(0)
    # VGG16: random weights and no BatchNormalization, so its random features are not degenerate.
    choice = resolve(BackboneParams("vgg16", "none", SIZE))
    model_views, single = build_views(choice, True)
    head = build_head(model_views.output_shape[-1], 2, [], 0.0, False)
    model = assemble_classifier(model_views, head)
    unfrozen = unfreeze_top(model, 5)
    assert unfrozen[0] == "block5_conv1"
    split = split_backbone(backbone_of(model), unfrozen[0])
    trained, scorer = classifiers(split, head, mirror=True)
    for compiled in (trained, scorer, model):
        compile_for_training(compiled, 1e-3)
    # A task the random features can tell: bright images against dark ones.
    images = np.concatenate([_images(16, 1) * 0.3, _images(16, 2) * 0.3 + 170])
    targets = np.eye(2, dtype="float32")[np.repeat([0, 1], 16)]
    on_images = trunk_on_images(split, single, choice.spec.preprocessing)
    views = run_trunk(on_images, [images[:8], images[8:]])
    mirrored = run_trunk(on_images, [images[:, :, ::-1][:8], images[:, :, ::-1][8:]])
    np.testing.assert_allclose(mirrored[0], views[1], rtol=1e-4, atol=1e-5)
    before = score(scorer, (views, targets), 8)
    np.testing.assert_allclose(before["loss"], score(model, (images, targets), 8)["loss"], rtol=1e-4)
    rows = fit(trained, view_dataset(*views, targets, 8, seed=0, flip=True), (views, targets),
               _training(epochs=5), None, start=before["loss"], scorer=scorer)
    after = score(scorer, (views, targets), 8)
    assert after["loss"] < before["loss"] and len(rows) == 5
    np.testing.assert_allclose(after["loss"], score(model, (images, targets), 8)["loss"], rtol=1e-4)


def _training(epochs: int):
    from transfer.params import TrainingParams

    return TrainingParams(epochs=epochs, lr=1e-3, batch_size=8, patience=5, label_smoothing=0.0,
                          class_weight="none", optimizer="adam", weight_decay=0.0, schedule="constant",
                          warmup_epochs=0)


def test_views_are_drawn_per_image_and_seeded():
    given = np.arange(64, dtype="float32").reshape(64, 1)
    mirrored = -given
    targets = np.eye(2, dtype="float32")[np.arange(64) % 2]

    def epoch(dataset):
        return np.concatenate([np.asarray(x)[:, 0] for x, _ in dataset])

    dataset = view_dataset(given, mirrored, targets, 16, seed=3, flip=True)
    first, second = epoch(dataset), epoch(dataset)
    assert sorted(np.abs(first)) == list(range(64)), "each image once an epoch, as given or mirrored"
    assert 16 < (first < 0).sum() < 48 and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, epoch(view_dataset(given, mirrored, targets, 16, seed=3, flip=True)))
    assert (epoch(view_dataset(given, mirrored, targets, 16, seed=3, flip=False)) >= 0).all()


def test_a_cache_too_large_is_refused_before_it_is_made():
    assert check_cache_size(100, (7, 7, 56), 4) == 2 * 100 * 7 * 7 * 56 * 4
    with pytest.raises(ParamError, match=r"fine_tune.trunk_cache = true is invalid here: .* 1000000 images"):
        check_cache_size(1_000_000, (28, 28, 64), 4)


def test_the_trunk_runs_each_batch_and_its_mirror_whatever_the_batch_sizes():
    import keras

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    images = _images(13)
    for batches in ([images[:8], images[8:]], [images[:3], images[3:]], [images]):
        given, mirrored = run_trunk(model, batches)
        np.testing.assert_allclose(given, model.predict(images, verbose=0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(mirrored, model.predict(images[:, :, ::-1], verbose=0), rtol=1e-5, atol=1e-4)
