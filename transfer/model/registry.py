"""The backbone registry: the one place that knows each backbone's constructor, input size and preprocessing,
and that resolves ``backbone``, ``weights`` and ``image_size`` into one checked choice (no Keras needed).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from transfer.errors import DataError, ParamError
from transfer.schema import BackboneParams

PREPROCESSING = ("caffe", "tf", "torch", "none", "unit")
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
# 0.35 and 0.5 (in bench/results/: accuracy.json against accuracy_224.json, heads_288.json against heads.json).
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
