"""Building backbones from the registry's choice: the Keras application with its weights, the from-scratch
nets, a cut at a named layer, the mirror views, and the preprocessing layers.

Preprocessing is built from stock Keras layers and placed inside the model, so a saved model takes raw
RGB pixels in [0, 255] and loads with nothing but Keras. Getting it wrong costs 10-30 points of accuracy
without any error, so each family's layers are tested against Keras' own ``preprocess_input``.
"""

from __future__ import annotations

import warnings

from transfer.errors import ParamError
from transfer.model.registry import BACKBONE_INIT_SEED, PREPROCESSING, BackboneChoice, weights_download_error

# What each family's preprocess_input does (keras.applications.imagenet_utils):
#   caffe: RGB -> BGR, then subtract the ImageNet mean per channel (VGG, ResNet v1);
#   tf:    scale to [-1, 1] (Inception, Xception, MobileNet v1/v2, ResNet v2, NASNet);
#   torch: scale to [0, 1], then standardise with the ImageNet mean and std (DenseNet);
#   none:  the model rescales raw [0, 255] pixels itself (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
#   unit:  scale to [0, 1] (the models trained from scratch).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

BACKBONE_LAYER = "backbone"


def build_backbone(choice: BackboneChoice):
    """Build the headless backbone with global average pooling, named :data:`BACKBONE_LAYER`; cut at
    ``choice.layer`` when one is given, so that it holds only the layers up to it.

    Returns:
        A ``keras.Model`` from preprocessed images of ``choice.image_size`` to pooled features.
    """
    import keras

    spec = choice.spec
    if not spec.pretrained:
        backbone = build_scratch(spec.name, choice.image_size)
        if choice.layer:
            backbone = cut_at(backbone, choice.layer, spec.name)
        backbone.name = BACKBONE_LAYER
        return backbone
    kwargs = dict(
        include_top=False,
        weights=choice.weights,
        input_shape=(*choice.image_size, 3),
        pooling=None if choice.layer else "avg",
    )
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    try:
        with warnings.catch_warnings():
            # MobileNets with ImageNet weights at a size they were not published for: Keras loads the 224 file,
            # whose weights fit any size, and says so on every build. That is what is meant here.
            warnings.filterwarnings("ignore", message=r".*Weights for input shape \(224, 224\) will be loaded")
            backbone = getattr(keras.applications, spec.constructor)(**kwargs)
    except ValueError as error:
        # Keras refuses some combinations itself (e.g. a MobileNet width that has no ImageNet weights).
        raise ParamError(
            f"backbone {spec.name} with weights={choice.weights} at image_size={list(choice.image_size)} "
            f"cannot be built: {error}"
        ) from None
    except Exception as error:
        if choice.weights == "imagenet" and "URL fetch failure" in str(error):
            raise weights_download_error(spec.name, str(error)) from None
        raise
    if choice.layer:
        backbone = cut_at(backbone, choice.layer, spec.name)
    # Renamed afterwards: EfficientNetV2 looks its block layout up by the name it is built with.
    backbone.name = BACKBONE_LAYER
    return backbone


def build_scratch(name: str, image_size: tuple[int, int]):
    """One of :data:`SCRATCH`, randomly initialised (seeded by the caller), from preprocessed images to features.

    ``flatten``: the pixels as they are. ``small_cnn``: Conv2D 64 and Conv2D 128 (3x3, same padding, ReLU), each
    followed by 2x2 max pooling, then flattened; the classic small CNN of the CIFAR-10 tutorials, whose Dense and
    Dropout layers are the head's (``head.hidden: [200]``, ``head.dropout``).
    """
    import keras

    inputs = keras.Input((*image_size, 3), name="pixels")
    x = inputs
    if name == "small_cnn":
        for block, filters in enumerate((64, 128), start=1):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}")(x)
            x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name=name)


CUT_POOL_LAYER = "cut_pool"


def cut_at(backbone, layer: str, name: str):
    """The part of ``backbone`` from its input to ``layer``, its output average-pooled over space.

    Raises:
        ParamError: ``backbone`` has no such layer (naming some it has), or the layer's output is not a
            feature map or a feature vector.
    """
    import keras

    names = [item.name for item in backbone.layers if not isinstance(item, keras.layers.InputLayer)]
    if layer not in names:
        ends = [item for item in names if item.endswith(("_pool", "_add", "_out", "out_relu", "_activation"))]
        shown = ends if len(ends) >= 3 else names
        examples = shown[:: max(1, len(shown) // 8)]
        raise ParamError(f"features.layer = {layer!r} is invalid: {name} has no layer of that name; expected null "
                         f"(its last layer) or one of its {len(names)} layers, such as {', '.join(examples)}")
    output = backbone.get_layer(layer).output
    if len(output.shape) == 4:
        output = keras.layers.GlobalAveragePooling2D(name=CUT_POOL_LAYER)(output)
    elif len(output.shape) != 2:
        raise ParamError(f"features.layer = {layer!r} is invalid: its output has shape {tuple(output.shape)}; "
                         "expected a feature map (batch, height, width, channels) or a vector (batch, features)")
    return keras.Model(backbone.inputs, output)


def preprocess(x, preprocessing: str):
    """Apply a family's preprocessing to a symbolic image tensor with stock, frozen Keras layers."""
    import keras
    import numpy as np

    if preprocessing == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")(x)
    if preprocessing == "torch":
        x = keras.layers.Rescaling(1 / 255.0, name="preprocess_torch_scale")(x)
        return keras.layers.Normalization(
            mean=list(TORCH_MEAN_RGB),
            variance=[s * s for s in TORCH_STD_RGB],
            name="preprocess_torch_standardise",
        )(x)
    if preprocessing == "caffe":
        # A frozen 1x1 convolution: its kernel swaps RGB to BGR and its bias subtracts the mean, exactly.
        layer = keras.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)
        y = layer(x)
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for rgb in range(3):
            kernel[0, 0, rgb, 2 - rgb] = 1.0
        layer.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
        return y
    if preprocessing == "none":
        return x
    if preprocessing == "unit":
        return keras.layers.Rescaling(1 / 255.0, name="preprocess_unit")(x)
    raise ValueError(f"unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSING}")


MIRROR_LAYER = "mirror_average"


def backbone_digest(model) -> str:
    """SHA-256 of the weights of the backbone inside ``model`` (every variable, in order): which backbone made
    a result. extract-features records it with the features; fine-tune refuses a backbone that differs."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for variable in model.get_layer(BACKBONE_LAYER).weights:
        digest.update(np.ascontiguousarray(np.asarray(variable.numpy())).tobytes())
    return digest.hexdigest()


def build_feature_extractor(choice: BackboneChoice, mirror: bool = False):
    """Raw RGB images of any size in, pooled backbone features out.

    Resizing and the backbone's own preprocessing are layers of the model, and the backbone runs with
    ``training=False`` so that its BatchNormalization layers always use their ImageNet statistics.
    Building reseeds the global random generators; seed the stage after it.

    Args:
        choice: the backbone, weights and size.
        mirror: average the pooled features of each image and of its horizontal mirror (one backbone run
            on both in one batch, layer :data:`MIRROR_LAYER`): features, and any model built on them, that do not change
            when the photo is flipped. Twice the forward passes.
    """
    return build_views(choice, mirror)[0]


def build_views(choice: BackboneChoice, mirror: bool):
    """(extractor, single-view extractor): :func:`build_feature_extractor`'s model, and one sharing all of its
    layers that runs the backbone on the image as given (the same model when ``mirror`` is off).

    Fine-tuning trains through the single view, on randomly flipped images, and scores and saves the
    mirror-averaged model: half the cost of a training step through both views, the same weights.
    """
    import keras

    # With weights "none" the backbone is random: extract-features and fine-tune must draw the same one.
    keras.utils.set_random_seed(BACKBONE_INIT_SEED)
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(*choice.image_size, name="resize")(inputs)
    x = preprocess(x, choice.spec.preprocessing)
    backbone = build_backbone(choice)
    features = backbone(x, training=False)
    single = keras.Model(inputs, features, name=f"{choice.spec.name}_features")
    if not mirror:
        return single, single
    # Both views in one batch through one call of the backbone: one graph of it to trace and to load, not two,
    # and twice the batch per call. keras.ops are saved as operations of the functional graph, so the model
    # still loads with Keras alone.
    both = backbone(keras.ops.concatenate([x, keras.ops.flip(x, axis=2)], axis=0), training=False)
    given, mirrored = keras.ops.split(both, 2, axis=0)
    averaged = keras.layers.Average(name=MIRROR_LAYER)([given, mirrored])
    return keras.Model(inputs, averaged, name=f"{choice.spec.name}_mirror_features"), single
