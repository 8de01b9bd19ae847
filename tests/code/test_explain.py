"""Grad-CAM maps have the image's size and point at what decided the class."""

import numpy as np
import pytest

from tests.helpers import tiny_classifier
from transfer.report.explain import gradcam, gradcam_sample


def _red_detector():
    """A classifier in the pipeline's layout whose class 0 ("red") score grows with the red pixels' area."""
    import keras

    inner = keras.Input((48, 48, 3))
    # Channel 0: how much redder than it is green and blue; channel 1: a constant bias channel.
    redness = keras.layers.Conv2D(2, 1, activation="relu", name="redness")
    x = redness(inner)
    redness.set_weights([np.array([[[[1.0, 0.0], [-0.5, 0.0], [-0.5, 0.0]]]]), np.array([0.0, 0.5])])
    backbone = keras.Model(inner, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    features = keras.Input((2,))
    dense = keras.layers.Dense(2, activation="softmax")
    head = keras.Model(features, dense(features), name="head")
    dense.set_weights([np.array([[0.2, -0.2], [0.0, 0.0]]), np.array([0.0, 0.0])])
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(48, 48, name="resize")(image)
    return keras.Model(image, head(backbone(x)), name="classifier")


def test_the_heatmap_has_the_image_size_and_sits_on_the_planted_object():
    image = np.full((120, 90, 3), 110.0, dtype=np.float32)
    image += np.random.default_rng(0).normal(0, 8, image.shape).astype(np.float32)
    image[70:100, 10:40] = (230.0, 30.0, 30.0)  # the red object, bottom left
    heatmap, explained, probabilities = gradcam(_red_detector(), image, class_index=0)
    assert heatmap.shape == (120, 90)
    assert explained == 0 and probabilities.shape == (2,)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    inside = heatmap[75:95, 15:35].mean()
    outside = np.concatenate([heatmap[:60].ravel(), heatmap[:, 55:].ravel()]).mean()
    assert inside > 0.8 and outside < 0.1, (inside, outside)
    peak = np.unravel_index(heatmap.argmax(), heatmap.shape)
    assert 70 <= peak[0] < 100 and 10 <= peak[1] < 40


def test_without_a_class_the_predicted_one_is_explained():
    image = np.random.default_rng(1).uniform(0, 255, (40, 60, 3)).astype(np.float32)
    model = tiny_classifier()
    heatmap, explained, probabilities = gradcam(model, image)
    assert explained == int(np.argmax(model.predict(image[None], verbose=0)[0]))
    np.testing.assert_allclose(probabilities, model.predict(image[None], verbose=0)[0], atol=1e-5)
    assert heatmap.shape == (40, 60)


def test_the_sample_mixes_right_and_wrong_predictions(shapes_folder, tmp_path):
    paths = sorted(str(path) for path in (shapes_folder / "circle").iterdir())[:6]
    probabilities = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1],
                              [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.4, 0.35, 0.25]])
    labels = np.zeros(6, dtype=int)
    shown = gradcam_sample(tiny_classifier(), paths, labels, probabilities, ["circle", "square", "triangle"], 4,
                           tmp_path / "gradcam.png")
    assert [row["predicted"] for row in shown] == ["circle", "circle", "triangle", "square"]
    assert [row["confidence"] for row in shown] == pytest.approx([0.9, 0.6, 0.8, 0.7])
    assert (tmp_path / "gradcam.png").stat().st_size > 0


def _one_per_family() -> list[str]:
    from transfer.model.registry import REGISTRY

    first: dict[str, str] = {}
    for name in sorted(REGISTRY):
        if REGISTRY[name].pretrained:  # the from-scratch baselines flatten their maps: nothing pooled to explain
            first.setdefault(REGISTRY[name].module, name)
    return sorted(first.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", _one_per_family())
def test_gradcam_finds_the_feature_map_of_every_backbone_family(name):
    from transfer.model.backbones import build_feature_extractor
    from transfer.model.classifier import assemble_classifier
    from transfer.model.heads import build_head
    from transfer.model.registry import REGISTRY, resolve
    from transfer.schema import BackboneParams

    size = max(REGISTRY[name].min_size, 64)
    extractor = build_feature_extractor(resolve(BackboneParams(name, "none", (size, size))))
    model = assemble_classifier(extractor, build_head(int(extractor.output_shape[-1]), 3, (), 0.0, False))
    image = np.random.default_rng(0).uniform(0, 255, (50, 70, 3)).astype(np.float32)
    heatmap, _, _ = gradcam(model, image)
    assert heatmap.shape == (50, 70) and np.isfinite(heatmap).all() and heatmap.min() >= 0


def test_a_mirror_averaging_classifier_is_explained_through_both_views():
    model = tiny_classifier(mirror=True)
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (40, 60, 3)).astype(np.float32)
    heatmap, explained, probabilities = gradcam(model, image)
    np.testing.assert_allclose(probabilities, model.predict(image[None], verbose=0)[0], atol=1e-5)
    assert explained == int(np.argmax(probabilities)) and heatmap.shape == (40, 60)
    # The model cannot tell a photo from its mirror, so the map of the mirror is the map mirrored.
    flipped, flipped_explained, _ = gradcam(model, image[:, ::-1].copy())
    assert flipped_explained == explained
    np.testing.assert_allclose(flipped, heatmap[:, ::-1], atol=1e-4)


def test_a_backbone_that_flattens_its_maps_has_no_gradcam_and_says_so():
    from transfer.errors import DataError
    from transfer.model.backbones import build_feature_extractor
    from transfer.model.classifier import assemble_classifier
    from transfer.model.heads import build_head
    from transfer.model.registry import resolve
    from transfer.schema import BackboneParams

    extractor = build_feature_extractor(resolve(BackboneParams("small_cnn", "none", (32, 32))))
    model = assemble_classifier(extractor, build_head(extractor.output_shape[-1], 2, (), 0.0, False))
    with pytest.raises(DataError, match="evaluate.gradcam needs a backbone whose last feature map is average-pooled"):
        gradcam(model, np.zeros((32, 32, 3), "float32"))
