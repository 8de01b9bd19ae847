"""The backbone registry: the one place that knows each backbone's constructor, input size and preprocessing.

Preprocessing is built from stock Keras layers and placed inside the model, so a saved model takes raw
RGB pixels in [0, 255] and loads with nothing but Keras. Getting it wrong costs 10-30 points of accuracy
without any error, so each family's layers are tested against Keras' own ``preprocess_input``.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from transfer.errors import DataError, ParamError
from transfer.params import BackboneParams

# What each family's preprocess_input does (keras.applications.imagenet_utils):
#   caffe: RGB -> BGR, then subtract the ImageNet mean per channel (VGG, ResNet v1);
#   tf:    scale to [-1, 1] (Inception, Xception, MobileNet v1/v2, ResNet v2, NASNet);
#   torch: scale to [0, 1], then standardise with the ImageNet mean and std (DenseNet);
#   none:  the model rescales raw [0, 255] pixels itself (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
#   unit:  scale to [0, 1] (the models trained from scratch).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
PREPROCESSING = ("caffe", "tf", "torch", "none", "unit")

BACKBONE_LAYER = "backbone"
BACKBONE_INIT_SEED = 0


@dataclass(frozen=True)
class Backbone:
    """One registry entry.

    Attributes:
        name: what users write in ``params.yaml``.
        constructor: the ``keras.applications`` function that builds it.
        module: the ``keras.applications`` submodule whose ``preprocess_input`` it expects.
        preprocessing: one of :data:`PREPROCESSING`.
        native_size: the input side it was trained at on ImageNet.
        min_size: the smallest input side Keras accepts.
        default_size: the input side ``image_size: null`` gives, where it was measured to beat the native one
            (see :data:`MEASURED_SIZES`); None: the native size.
        alpha: the width multiplier of MobileNets, else None.
        pretrained: False for the architectures of :data:`SCRATCH` (built here, trained from scratch: they take
            only ``weights: none``).
    """

    name: str
    constructor: str
    module: str
    preprocessing: str
    native_size: int
    min_size: int = 32
    alpha: float | None = None
    pretrained: bool = True
    default_size: int | None = None

    @property
    def size_when_null(self) -> int:
        """The input side ``image_size: null`` gives."""
        return self.default_size or self.native_size


# Families whose default input side is not their native one, because it was measured better: MobileNetV2 at 288
# (ImageNet weights trained at 224; its convolutions and pooling take any size) on the 1,000 dev photos, widths
# 0.35 and 0.5 (bench/accuracy.json against bench/accuracy_224.json; bench/heads_288.json against bench/heads.json).
# Every other backbone runs at its native size.
MEASURED_SIZES = {"mobilenetv2": 288}


def _entries() -> list[Backbone]:
    entries = [
        Backbone("vgg16", "VGG16", "vgg16", "caffe", 224),
        Backbone("vgg19", "VGG19", "vgg19", "caffe", 224),
        Backbone("resnet50", "ResNet50", "resnet", "caffe", 224),
        Backbone("resnet101", "ResNet101", "resnet", "caffe", 224),
        Backbone("resnet152", "ResNet152", "resnet", "caffe", 224),
        Backbone("resnet50v2", "ResNet50V2", "resnet_v2", "tf", 224),
        Backbone("resnet101v2", "ResNet101V2", "resnet_v2", "tf", 224),
        Backbone("resnet152v2", "ResNet152V2", "resnet_v2", "tf", 224),
        Backbone("inceptionv3", "InceptionV3", "inception_v3", "tf", 299, min_size=75),
        Backbone("inceptionresnetv2", "InceptionResNetV2", "inception_resnet_v2", "tf", 299, min_size=75),
        Backbone("xception", "Xception", "xception", "tf", 299, min_size=71),
        Backbone("nasnetmobile", "NASNetMobile", "nasnet", "tf", 224),
        Backbone("densenet121", "DenseNet121", "densenet", "torch", 224),
        Backbone("densenet169", "DenseNet169", "densenet", "torch", 224),
        Backbone("densenet201", "DenseNet201", "densenet", "torch", 224),
        Backbone("convnext_tiny", "ConvNeXtTiny", "convnext", "none", 224),
        Backbone("convnext_small", "ConvNeXtSmall", "convnext", "none", 224),
        Backbone("convnext_base", "ConvNeXtBase", "convnext", "none", 224),
    ]
    efficientnet_sizes = (224, 240, 260, 300, 380, 456, 528, 600)
    entries += [
        Backbone(f"efficientnetb{i}", f"EfficientNetB{i}", "efficientnet", "none", size)
        for i, size in enumerate(efficientnet_sizes)
    ]
    entries += [
        Backbone(f"efficientnetv2b{i}", f"EfficientNetV2B{i}", "efficientnet_v2", "none", size)
        for i, size in enumerate(efficientnet_sizes[:4])
    ]
    # MobileNets come in widths; the plain name is width 1.0, the others carry it as a suffix.
    widths = {
        ("mobilenet", "MobileNet", "mobilenet", "tf"): (0.25, 0.5, 0.75, 1.0),
        ("mobilenetv2", "MobileNetV2", "mobilenet_v2", "tf"): (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        ("mobilenetv3small", "MobileNetV3Small", "mobilenet_v3", "none"): (0.75, 1.0),
        ("mobilenetv3large", "MobileNetV3Large", "mobilenet_v3", "none"): (0.75, 1.0),
    }
    for (name, constructor, module, preprocessing), alphas in widths.items():
        for alpha in alphas:
            entry_name = name if alpha == 1.0 else f"{name}_{alpha:g}"
            entries.append(Backbone(entry_name, constructor, module, preprocessing, 224, alpha=alpha,
                                    default_size=MEASURED_SIZES.get(name)))
    # Baselines trained from scratch, to answer "does transfer beat training from scratch on my data?". The
    # features of `flatten` are the pixels themselves (the head is then a plain dense network); those of
    # `small_cnn` come from two random convolution blocks, which fine-tune trains with the head.
    entries += [
        Backbone(name, name, "scratch", "unit", 32, min_size=min_size, pretrained=False)
        for name, min_size in SCRATCH.items()
    ]
    return entries


# The architectures built here rather than taken from keras.applications, and the smallest side each takes.
SCRATCH = {"flatten": 1, "small_cnn": 4}


REGISTRY: dict[str, Backbone] = {entry.name: entry for entry in _entries()}

# Layers of each headless backbone (with its pooling), as fine_tune.unfreeze counts them: a number above it is
# refused when params are checked, before extraction and the head run. A test builds every entry to hold this.
LAYER_COUNTS: dict[str, int] = {
    "vgg16": 19, "vgg19": 22, "resnet50": 175, "resnet101": 345, "resnet152": 515, "resnet50v2": 190,
    "resnet101v2": 377, "resnet152v2": 564, "inceptionv3": 311, "inceptionresnetv2": 780, "xception": 132,
    "nasnetmobile": 769, "densenet121": 427, "densenet169": 595, "densenet201": 707, "convnext_tiny": 133,
    "convnext_small": 259, "convnext_base": 259, "efficientnetb0": 237, "efficientnetb1": 339, "efficientnetb2": 339,
    "efficientnetb3": 384, "efficientnetb4": 474, "efficientnetb5": 576, "efficientnetb6": 666,
    "efficientnetb7": 813, "efficientnetv2b0": 270, "efficientnetv2b1": 334, "efficientnetv2b2": 349,
    "efficientnetv2b3": 409, "mobilenet_0.25": 86, "mobilenet_0.5": 86, "mobilenet_0.75": 86, "mobilenet": 86,
    "mobilenetv2_0.35": 154, "mobilenetv2_0.5": 154, "mobilenetv2_0.75": 154, "mobilenetv2": 154,
    "mobilenetv2_1.3": 154, "mobilenetv2_1.4": 154, "mobilenetv3small_0.75": 157, "mobilenetv3small": 157,
    "mobilenetv3large_0.75": 187, "mobilenetv3large": 187, "flatten": 1, "small_cnn": 5,
}


@dataclass(frozen=True)
class BackboneChoice:
    """A validated backbone, weights and input size, ready to build.

    Attributes:
        spec: the registry entry.
        weights: ``"imagenet"``, None for random initialisation, or an absolute path to a weights file.
        image_size: (height, width) the backbone runs at.
        layer: the layer the backbone is cut at (its pooled output are the features), or None for its last.
    """

    spec: Backbone
    weights: str | None
    image_size: tuple[int, int]
    layer: str | None = None


def resolve(params: BackboneParams, source: str = "params.yaml") -> BackboneChoice:
    """Check a backbone, weights and size against the registry.

    Raises:
        ParamError: an unknown backbone (listing the valid ones), a missing weights file, or a size below
            the backbone's minimum.
    """
    spec = REGISTRY.get(params.name.strip().lower())
    if spec is None:
        close = difflib.get_close_matches(params.name.strip().lower(), REGISTRY, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ParamError(
            f"{source}: backbone = {params.name!r} is invalid: {hint}expected one of {', '.join(sorted(REGISTRY))}"
        )
    weights: str | None
    if not spec.pretrained and params.weights.lower() != "none":
        raise ParamError(
            f"{source}: weights = {params.weights!r} is invalid: backbone {spec.name} is trained from scratch and "
            "has no pretrained weights; expected none"
        )
    if params.weights.lower() == "imagenet":
        weights = "imagenet"
    elif params.weights.lower() == "none":
        weights = None
    else:
        # Relative to the stage's directory, where DVC hashed inputs/weights (see params.input_file).
        path = Path(params.weights).expanduser()
        if not path.is_file():
            raise ParamError(
                f"{source}: weights = {params.weights!r} is invalid: expected imagenet, none, "
                f"or the path of an existing weights file (looked for {path.resolve()}; a queued experiment "
                "sees only what git holds: `dvc add` the file and commit its .dvc pointer)"
            )
        weights = str(path.resolve())
    size = params.image_size or (spec.size_when_null, spec.size_when_null)
    if min(size) < spec.min_size:
        raise ParamError(
            f"{source}: image_size = {list(size)} is invalid: {spec.name} needs at least "
            f"{spec.min_size}x{spec.min_size} (null gives {spec.size_when_null})"
        )
    return BackboneChoice(spec=spec, weights=weights, image_size=size, layer=params.layer)


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


def weights_download_error(name: str, message: str) -> DataError:
    """The one-line way out when Keras cannot download ImageNet weights (offline, or a proxy in the way).

    Args:
        name: the backbone.
        message: Keras' own message, ``URL fetch failure on <url>: <code> -- <reason>``.
    """
    url = re.search(r"https?://\S+?(?=:\s|$)", message)
    file = url.group(0).rsplit("/", 1)[-1] if url else f"the {name} weights file"
    reason = message.rsplit(" -- ", 1)[-1] if " -- " in message else message
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    return DataError(
        f"cannot download the ImageNet weights of {name} ({reason.strip()}) from {url.group(0) if url else 'Keras'}; "
        f"offline, set weights to the path of {file} (copied from a machine with a network), or put it in "
        f"{cache} (the Keras cache, set by KERAS_HOME) and keep weights: imagenet"
    )


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
