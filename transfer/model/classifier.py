"""The deployable classifier: feature extractor + head, what fine-tuning unfreezes, and how it is saved.

``models/model.keras`` takes raw RGB pixels and returns class probabilities; the class names are stored
beside it in ``models/model.classes.json``. Loading needs nothing from this project but Keras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer.errors import DataError, ParamError
from transfer.io import atomic_path, read_json, write_json
from transfer.model.backbones import BACKBONE_LAYER
from transfer.model.heads import HEAD_LAYER
from transfer.schema import UNFREEZE_ALL

CLASSES_SUFFIX = ".classes.json"


def assemble_classifier(extractor, head):
    """Join a feature extractor and a head into one model from raw images to probabilities."""
    import keras

    return keras.Model(extractor.input, head(extractor.output), name="classifier")


def backbone_of(model):
    """The nested ``keras.applications`` backbone of an extractor or classifier."""
    return model.get_layer(BACKBONE_LAYER)


def unfrozen_from(backbone, unfreeze: int | str) -> int:
    """The index, among ``backbone``'s layers (its input aside), of the first one ``unfreeze`` trains.

    Args:
        backbone: the ``keras.applications`` backbone (see :func:`backbone_of`).
        unfreeze: the number of top layers to train, the name of the first layer to train, or ``"all"``.

    Raises:
        ParamError: ``unfreeze`` is more layers than the backbone has, or names no layer of it.
    """
    layers = _backbone_layers(backbone)
    if unfreeze == UNFREEZE_ALL:
        return 0
    if isinstance(unfreeze, str):
        names = [layer.name for layer in layers]
        if unfreeze not in names:
            examples = ", ".join(names[-12::3])
            raise ParamError(
                f"fine_tune.unfreeze = {unfreeze!r} is invalid: expected {UNFREEZE_ALL}, a number of layers "
                f"(0 to {len(layers)}) or a layer name of this backbone, such as {examples}"
            )
        return names.index(unfreeze)
    if unfreeze > len(layers):
        raise ParamError(f"fine_tune.unfreeze = {unfreeze} is invalid: this backbone has {len(layers)} layers")
    return len(layers) - unfreeze


def trained_layers(backbone, unfreeze: int | str) -> list[str]:
    """The names of the backbone layers that :func:`unfreeze_top` trains: from :func:`unfrozen_from` up, every
    one but BatchNormalization."""
    import keras

    layers = _backbone_layers(backbone)[unfrozen_from(backbone, unfreeze):]
    return [layer.name for layer in layers if not isinstance(layer, keras.layers.BatchNormalization)]


def _backbone_layers(backbone) -> list:
    import keras

    return [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def unfreeze_top(model, unfreeze: int | str) -> list[str]:
    """Make the top of the backbone trainable, keeping every BatchNormalization layer of the model frozen.

    Everything outside the backbone (the head) stays trainable, except BatchNormalization: a frozen BN layer
    runs in inference mode in Keras 3, so the ImageNet statistics survive small fine-tuning batches.
    Recompile the model after calling this.

    Args:
        model: a classifier from :func:`assemble_classifier`.
        unfreeze: the number of top backbone layers to train, the name of the first layer to train, or
            ``"all"`` for every layer of the backbone (BatchNormalization still excepted).

    Returns:
        The names of the backbone layers left trainable.

    Raises:
        ParamError: ``unfreeze`` is more layers than the backbone has, or names no layer of it.
    """
    import keras

    backbone = backbone_of(model)
    start = unfrozen_from(backbone, unfreeze)
    # Not model.trainable = True: that would also unfreeze the fixed preprocessing layers.
    backbone.trainable = True
    for index, layer in enumerate(_backbone_layers(backbone)):
        layer.trainable = index >= start
    model.get_layer(HEAD_LAYER).trainable = True
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return trained_layers(backbone, unfreeze)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def input_size(model) -> tuple[int, int]:
    """The (height, width) a classifier resizes its input to, read from its ``resize`` layer."""
    resize = model.get_layer("resize")
    return int(resize.height), int(resize.width)


def classes_path(model_path: Path) -> Path:
    """Where the class names of a saved model live: ``model.keras`` -> ``model.classes.json``."""
    return model_path.with_name(model_path.stem + CLASSES_SUFFIX)


def float32_config(config: Any) -> Any:
    """A model config with every mixed dtype policy replaced by float32 (for saving a deployable model).

    Only ``dtype`` entries change: layer names such as InceptionResNetV2's ``mixed_6a`` stay as they are.
    """
    if isinstance(config, list):
        return [float32_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy":
        name = str(config.get("config", {}).get("name", ""))
        return {**config, "config": {**config["config"], "name": "float32"}} if name.startswith("mixed_") else config
    rewritten = {key: float32_config(value) for key, value in config.items()}
    if isinstance(rewritten.get("dtype"), str) and rewritten["dtype"].startswith("mixed_"):
        rewritten["dtype"] = "float32"
    return rewritten


def save_model(model, path: Path, classes: list[str]) -> None:
    """Save a model's architecture and weights (no optimizer state) and its class names, each whole or not at all."""
    import keras

    # A copy rebuilt from the model's config has never been compiled, so the file carries no optimizer
    # slots (which would triple the size of a fine-tuned model) and loads without warnings. Mixed precision
    # keeps float32 weights, so a float32 copy loses nothing and runs the same on a CPU.
    bare = keras.Model.from_config(float32_config(model.get_config()))
    bare.set_weights(model.get_weights())
    with atomic_path(path) as temporary:
        bare.save(temporary)
        _drop_save_times(temporary)
    write_json(classes_path(path), classes)


# The timestamp every member of a saved model gets: the earliest a zip file can hold.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _drop_save_times(path: Path) -> None:
    """Rewrite a ``.keras`` file without the times of saving (``date_saved`` in ``metadata.json``, each zip
    member's timestamp), so the same model always has the same bytes and DVC sees no change where there is
    none. Member order, contents and compression are kept."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as saved:
        members = [(info, saved.read(info)) for info in saved.infolist()]
    with zipfile.ZipFile(path, "w") as rewritten:
        for info, data in members:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            rewritten.writestr(fixed, data)


def load_model(path: Path):
    """Load a saved model and its class names.

    Returns:
        (model, class names).
    """
    import keras

    if not path.is_file():
        raise DataError(f"{path} does not exist; run the stage that trains it first")
    if not classes_path(path).is_file():
        raise DataError(f"{classes_path(path)} does not exist: the class names of {path} are missing")
    model = keras.saving.load_model(path, compile=False)
    return model, read_json(classes_path(path))
