"""Grad-CAM: where in the image the classifier looked (Selvaraju et al., 2017).

The heatmap is the backbone's last convolutional feature map, each channel weighted by the mean gradient of
the class's log-probability with respect to it, rectified, and resized back onto the image. A classifier that
averages each image with its mirror gets the sum of both views' maps, the mirror's flipped back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transfer.data.images import exif_orientation
from transfer.data.pipeline import decode_upright
from transfer.errors import DataError
from transfer.model.backbones import MIRROR_LAYER
from transfer.model.classifier import backbone_of
from transfer.model.heads import HEAD_LAYER
from transfer.plotting import drawable, save_figure


def _gradcam_parts(model):
    """(layers before the backbone, backbone to [last feature map, pooled features], head, whether the
    classifier averages each image with its mirror)."""
    import keras

    backbone = backbone_of(model)
    # The last global pooling: its input is the last feature map (ConvNeXt normalises after pooling).
    pooling = [layer for layer in backbone.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pooling:
        raise DataError("evaluate.gradcam needs a backbone whose last feature map is average-pooled, and this "
                        "model's flattens it (the from-scratch flatten and small_cnn do): set evaluate.gradcam: 0")
    to_maps = keras.Model(backbone.inputs, [pooling[-1].input, backbone.output])
    after = (HEAD_LAYER, MIRROR_LAYER)
    before = [layer for layer in model.layers[1:] if layer is not backbone and layer.name not in after]
    mirror = any(layer.name == MIRROR_LAYER for layer in model.layers)
    return before, to_maps, model.get_layer(HEAD_LAYER), mirror


def gradcam(model, image: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """The Grad-CAM heatmap of one image.

    Args:
        model: a classifier from :func:`transfer.model.classifier.assemble_classifier` (raw pixels in).
        image: one RGB image, [height, width, 3], pixel values in [0, 255], any size.
        class_index: the class to explain; None explains the predicted one.

    Returns:
        (heatmap [height, width] in [0, 1] at the image's own size, the class explained, the probabilities).
    """
    import tensorflow as tf

    before, to_maps, head, mirror = _gradcam_parts(model)
    x = tf.convert_to_tensor(image[None], tf.float32)
    for layer in before:  # resize and the backbone's preprocessing, as in the model itself
        x = layer(x)
    views = [x, tf.reverse(x, axis=[2])] if mirror else [x]
    with tf.GradientTape() as tape:
        outputs = [to_maps(view, training=False) for view in views]
        maps = [view_maps for view_maps, _ in outputs]
        for view_maps in maps:
            tape.watch(view_maps)
        pooled = tf.add_n([view_pooled for _, view_pooled in outputs]) / len(outputs)
        probabilities = head(pooled, training=False)
        chosen = int(tf.argmax(probabilities[0])) if class_index is None else class_index
        score = tf.math.log(probabilities[0, chosen] + 1e-12)
    cams = []
    for view_maps, gradients in zip(maps, tape.gradient(score, maps), strict=True):
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams.append(tf.nn.relu(tf.reduce_sum(weights * view_maps, axis=-1))[0])
    if mirror:
        cams[1] = tf.reverse(cams[1], axis=[1])  # back onto the image as given
    cam = tf.image.resize(tf.add_n(cams)[..., None], image.shape[:2], method="bilinear")[..., 0].numpy()
    peak = cam.max()
    return (cam / peak if peak > 0 else cam), chosen, probabilities[0].numpy()


def plot_gradcam(
    images: list[np.ndarray], titles: list[str], heatmaps: list[np.ndarray], path: Path, columns: int = 4
) -> None:
    """A grid of images with their heatmaps laid over them, each titled (true, predicted, confidence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title, heatmap in zip(axes.flat, images, titles, heatmaps, strict=True):
        axis.imshow(image.astype(np.uint8))
        axis.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axis.set_title(title, fontsize=8)
    figure.suptitle("Grad-CAM: where the model looked for the predicted class")
    figure.tight_layout()
    save_figure(figure, path, dpi=100, tight=False)


def gradcam_sample(
    model, paths: list[str], labels: np.ndarray, probabilities: np.ndarray, classes: list[str], count: int,
    path: Path,
) -> list[dict]:
    """Grad-CAM figures for the most confident right and wrong test predictions, half of each where possible.

    Returns:
        {"path", "actual", "predicted", "confidence"} of each image shown, in figure order.
    """
    import tensorflow as tf

    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    by_confidence = np.argsort(-confidence, kind="stable")
    wrong = [i for i in by_confidence if predicted[i] != labels[i]]
    right = [i for i in by_confidence if predicted[i] == labels[i]]
    take_wrong = min(len(wrong), count // 2)
    chosen = right[: count - take_wrong] + wrong[:take_wrong]
    chosen += wrong[take_wrong : take_wrong + count - len(chosen)]  # too few right ones: more wrong ones
    images, titles, heatmaps, shown = [], [], [], []
    for i in chosen:
        image = decode_upright(tf.io.read_file(paths[i]), exif_orientation(paths[i])).numpy()  # as the model saw it
        heatmap, _, _ = gradcam(model, image)
        images.append(image)
        heatmaps.append(heatmap)
        mark = "right" if predicted[i] == labels[i] else "WRONG"
        titles.append(f"{mark}: {drawable(classes[labels[i]])} -> {drawable(classes[predicted[i]])} "
                      f"({confidence[i]:.2f})")
        shown.append({"path": paths[i], "actual": classes[labels[i]], "predicted": classes[predicted[i]],
                      "confidence": float(confidence[i])})
    if chosen:
        plot_gradcam(images, titles, heatmaps, path)
    return shown
