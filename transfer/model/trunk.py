"""The cache reaches fine-tuning: the frozen trunk runs once, in extract-features, and fine-tune trains the top.

Below the fine-tune boundary (``fine_tune.unfreeze``) the backbone is frozen, so what it makes of an image never
changes. :func:`split_backbone` cuts the backbone where one tensor separates the frozen trunk from the trained
top. extract-features runs the trunk on every training and validation image and on its mirror, in the same
pass that makes their pooled features (the pooled features are the top's output on those tensors), and on
``features.trunk_views`` augmented copies of each training image; fine-tune then trains the top from that cache,
streamed from disk. The top is rebuilt on the backbone's own layer objects, so training it trains the full
model, which is what gets scored and saved.

Layout (``data/features/trunk/``):
    train.npy   [(2 + K) x N, *shape]: row v * N + i is view v of training image i (0: as given, 1: mirrored,
                2..: the augmented copies, drawn with features.view_augment)
    val.npy     [2 x N, *shape]: each validation image as given, then mirrored
    meta.json   the boundary (fine_tune.unfreeze and the top's first layer), the backbone's digest, the image
                size, shape, dtype, K and counts: fine-tune refuses a cache that its params did not make
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfer.errors import DataError, ParamError
from transfer.io import read_json
from transfer.model.rows import RowFile

TRUNK_FOLDER = "trunk"
TRUNK_SPLITS = ("train", "val")
META_FILE = "meta.json"
# What the disk must keep free beyond the cache itself, for everything else a run writes.
DISK_MARGIN = 1.1


@dataclass
class Split:
    """A backbone cut in two.

    Attributes:
        trunk: backbone input to the boundary tensor (frozen).
        top: the boundary tensor to the backbone's output, on the backbone's own layers.
        first: the name of the top's first layer (at or below the first unfrozen layer: the cut moves down to
            the nearest point that a single tensor crosses, e.g. below a residual block).
    """

    trunk: object
    top: object
    first: str


# Private Keras names, on purpose: a layer's first inbound node (``_inbound_nodes[0]``: its call when the backbone
# was built; the public ``layer.input`` refuses a layer called again, as the mirror views call the backbone), the
# layer that made a tensor (``_keras_history``), and that call's arguments with new tensors put in
# (``node.arguments.fill_in``), which rebuilds the top on the backbone's own layers, weights shared. Pinned by
# tests/code/test_trunk.py (test_the_keras_internals_the_split_relies_on and trunk-then-top == backbone).


def _crossing(operations: list, start: int) -> dict[int, object]:
    """The tensors made before ``operations[start]`` and used from it on, by id."""
    inside = {id(operation) for operation in operations[start:]}
    crossing = {}
    for operation in operations[start:]:
        for tensor in operation._inbound_nodes[0].input_tensors:
            if id(tensor._keras_history.operation) not in inside:
                crossing[id(tensor)] = tensor
    return crossing


def split_backbone(backbone, first_trained: str) -> Split:
    """Cut ``backbone`` (a functional ``keras.Model``) at or below its layer ``first_trained``."""
    import keras
    from keras import tree

    operations = [operation for operation in backbone.operations if not isinstance(operation, keras.layers.InputLayer)]
    names = [operation.name for operation in operations]
    start = names.index(first_trained)
    crossing = _crossing(operations, start)
    while len(crossing) != 1:
        start -= 1
        crossing = _crossing(operations, start)
    boundary = next(iter(crossing.values()))
    trunk = keras.Model(backbone.input, boundary, name="trunk")
    inputs = keras.Input(boundary.shape[1:], dtype=boundary.dtype, name="trunk_output")
    tensors = {id(boundary): inputs}
    for operation in operations[start:]:
        node = operation._inbound_nodes[0]
        args, kwargs = node.arguments.fill_in(tensors)
        for symbolic, value in zip(node.outputs, tree.flatten(operation(*args, **kwargs)), strict=True):
            tensors[id(symbolic)] = value
    top = keras.Model(inputs, tensors[id(backbone.output)], name="top")
    return Split(trunk=trunk, top=top, first=names[start])


def classifiers(split: Split, head, mirror: bool):
    """(trained, scorer): the top plus head on one cached view, and the scorer that validates the full model
    from the cache: both views averaged when ``mirror`` (the saved model's own mirror averaging), else one."""
    import keras

    from transfer.model.backbones import MIRROR_LAYER

    shape, dtype = split.top.input.shape[1:], split.top.input.dtype
    view = keras.Input(shape, dtype=dtype, name="trunk_output")
    trained = keras.Model(view, head(split.top(view, training=False)), name="top_classifier")
    if not mirror:
        return trained, trained
    given, mirrored = keras.Input(shape, dtype=dtype, name="given"), keras.Input(shape, dtype=dtype, name="mirrored")
    averaged = keras.layers.Average(name=MIRROR_LAYER)([split.top(given, training=False),
                                                        split.top(mirrored, training=False)])
    return trained, keras.Model([given, mirrored], head(averaged), name="top_scorer")




def trunk_on_images(split: Split, single_view, preprocessing: str):
    """Raw images in, the trunk's output out: ``single_view``'s own resizing, the backbone's preprocessing, the
    trunk."""
    import keras

    from transfer.model.backbones import preprocess

    inputs = keras.Input((None, None, 3), name="image")
    resized = single_view.get_layer("resize")(inputs)
    return keras.Model(inputs, split.trunk(preprocess(resized, preprocessing), training=False),
                       name="trunk_on_images")


def joint_extractor(split: Split, single_view, preprocessing: str, mirror: bool):
    """Raw images in; (pooled features, the trunk's output on each image, on its mirror) out, in one pass.

    The pooled features are the top's output on the trunk's, so they are the extractor's features (averaged
    with the mirror's when ``mirror``, as :func:`transfer.model.backbones.build_views` averages them): the trunk
    cache costs extraction no forward pass of its own, only the writing.
    """
    import keras

    from transfer.model.backbones import MIRROR_LAYER, preprocess

    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess(single_view.get_layer("resize")(inputs), preprocessing)
    both = split.trunk(keras.ops.concatenate([x, keras.ops.flip(x, axis=2)], axis=0), training=False)
    given, mirrored = keras.ops.split(both, 2, axis=0)
    pooled_given, pooled_mirrored = keras.ops.split(split.top(both, training=False), 2, axis=0)
    pooled = keras.layers.Average(name=MIRROR_LAYER)([pooled_given, pooled_mirrored]) if mirror else pooled_given
    return keras.Model(inputs, [pooled, given, mirrored], name="features_and_trunk")


def boundary_layer(backbone, unfreeze: int | str) -> str | None:
    """The layer where the trained top begins for ``fine_tune.unfreeze`` (the first layer it trains; the last
    one when it trains none of the backbone), or None when nothing below it stays frozen."""
    from transfer.model.classifier import trained_layers, unfrozen_from

    if unfrozen_from(backbone, unfreeze) == 0:
        return None
    trained = trained_layers(backbone, unfreeze)
    return trained[0] if trained else backbone.operations[-1].name


@dataclass
class TrunkPlan:
    """What extract-features writes under ``trunk/`` (see the module's layout), and the models that make it.

    Attributes:
        joint: raw images to (pooled features, trunk output, trunk output of the mirror): see
            :func:`joint_extractor`.
        views: raw images to the trunk's output on a randomly changed copy (a new draw each call), or None.
        copies: K, the augmented copies of each training image.
        shape: the trunk's output shape for one image.
        facts: what the cache records of how it was made (the boundary, the backbone's digest, the size).
    """

    joint: Any
    views: Any
    copies: int
    shape: tuple[int, ...]
    facts: dict = field(default_factory=dict)
    folder: str = TRUNK_FOLDER
    splits: tuple[str, ...] = TRUNK_SPLITS

    def views_of(self, split: str) -> int:
        """Rows per image in ``split``'s file: as given, mirrored, and (training only) the copies."""
        return 2 + (self.copies if split == "train" else 0)

    def bytes_for(self, counts: dict[str, int], dtype: str) -> int:
        row = int(np.prod(self.shape)) * np.dtype(dtype).itemsize
        return sum(self.views_of(split) * counts.get(split, 0) * row for split in self.splits)

    def record(self, dtype: str, counts: dict[str, int]) -> dict:
        return {**self.facts, "shape": list(self.shape), "dtype": dtype, "copies": self.copies, "counts": counts,
                "views": ["given", "mirrored", *(f"augmented_{k + 1}" for k in range(self.copies))]}


def plan_trunk(single_view, preprocessing: str, unfreeze: int | str, mirror: bool, copies: int, augment,
               seed: int, facts: dict) -> tuple[TrunkPlan | None, str]:
    """The trunk cache extract-features writes for ``fine_tune.unfreeze``, or None, with a line that says which.

    None when nothing is frozen (``unfreeze: all``, or every layer counted) or when ``unfreeze`` does not fit
    this backbone (fine-tune says so if it trains).
    """
    from transfer.model.classifier import backbone_of
    from transfer.model.features import changing_extractor

    backbone = backbone_of(single_view)
    try:
        first = boundary_layer(backbone, unfreeze)
    except ParamError as error:
        return None, f"no trunk cache: {error}"
    if first is None:
        return None, f"no trunk cache: fine_tune.unfreeze = {unfreeze} leaves no layer frozen"
    split = split_backbone(backbone, first)
    joint = joint_extractor(split, single_view, preprocessing, mirror)
    views = None
    if copies:
        views = changing_extractor(trunk_on_images(split, single_view, preprocessing), augment, seed,
                                   key="features.trunk_views")
    shape = tuple(int(side) for side in split.trunk.output.shape[1:])
    plan = TrunkPlan(joint=joint, views=views, copies=copies, shape=shape,
                     facts={**facts, "unfreeze": unfreeze, "first_layer": split.first})
    return plan, (f"the frozen trunk (below {split.first}, output {list(shape)}) for every training and validation "
                  f"image and its mirror, and {copies} augmented cop{'y' if copies == 1 else 'ies'} of each training "
                  "image")


def check_disk(folder: Path, needed: int) -> None:
    """Refuse, before any work, a trunk cache that the disk under ``folder`` cannot hold.

    Raises:
        DataError: naming the size, the free space and the ways out.
    """
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed * DISK_MARGIN > free:
        raise DataError(
            f"the trunk cache for fine-tuning would take {needed / 1024**3:.1f} GiB and {probe} has "
            f"{free / 1024**3:.1f} GiB free; free some space, lower features.trunk_views, unfreeze fewer layers "
            "(fine_tune.unfreeze: the boundary sits higher, where the output is smaller), or set "
            "features.dtype: float16"
        )


class TrunkCache:
    """Read access to ``trunk/`` of a feature folder: fine-tune's training and validation inputs, from disk.

    Batches are read a few rows at a time (:class:`transfer.model.rows.RowFile`), so memory does not grow with the
    number of photos.
    """

    def __init__(self, features: Path):
        self.folder = Path(features) / TRUNK_FOLDER
        if not (self.folder / META_FILE).is_file():
            raise DataError(
                f"{self.folder} holds no trunk cache, which fine_tune.trunk_cache: true trains from (extract-features "
                "writes it when fine_tune.unfreeze leaves layers frozen); `dvc repro` makes it, or set "
                "fine_tune.trunk_cache: false to train through the whole backbone")
        self.meta = read_json(self.folder / META_FILE)
        self.shape = tuple(self.meta["shape"])
        self.copies = int(self.meta["copies"])
        self.counts = {split: int(count) for split, count in self.meta["counts"].items()}

    def check(self, unfreeze: int | str, first: str, digest: str, shape: tuple[int, ...]) -> None:
        """Refuse, in one line, a cache made for another boundary or backbone than fine-tune's."""
        made = (self.meta.get("unfreeze"), self.meta.get("first_layer"))
        if made != (unfreeze, first):
            raise DataError(
                f"{self.folder} was made for fine_tune.unfreeze = {made[0]} (the top from {made[1]}), not "
                f"{unfreeze} (from {first}); `dvc repro` re-runs extract-features, which reads fine_tune.unfreeze")
        if self.meta.get("backbone_sha256") != digest:
            raise DataError(f"{self.folder} was made by other backbone weights than fine-tune's; `dvc repro` "
                            "re-extracts (it sees a change in weights or inputs/weights)")
        if self.shape != tuple(shape):
            raise DataError(f"{self.folder} holds trunk outputs of shape {list(self.shape)}, but this backbone's "
                            f"trunk gives {list(shape)}; `dvc repro` re-extracts")

    def _rows(self, split: str) -> RowFile:
        return RowFile.open(self.folder / f"{split}.npy")

    def training(self, targets: np.ndarray, batch_size: int, seed: int, flip: bool):
        """Training batches, each epoch reshuffled and each image drawn as one of its views, seeded: as given,
        mirrored (when ``flip``), or one of its augmented copies.

        The order is tf.data's seeded shuffle of the image positions, the very order in which
        :func:`transfer.data.pipeline.image_dataset` shuffles the photos under the same seed, so with no views to
        draw from the cache trains exactly as the photos would.
        """
        import tensorflow as tf

        rows, count = self._rows("train"), self.counts["train"]
        choices = np.array([0, *([1] if flip else []), *range(2, 2 + self.copies)], dtype=np.int64)
        order = tf.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def read(images, draw):
            view = choices[np.asarray(draw) % len(choices)]
            return rows.read(view * count + images).astype(np.float32)

        return self._batches(tf.data.Dataset.zip(order, draws).batch(batch_size), read, targets)

    def validation(self, targets: np.ndarray, batch_size: int, mirror: bool):
        """Validation batches in order: each image as given and mirrored (for the mirror-averaging scorer) when
        ``mirror``, else as given; None when there is no validation image."""
        import tensorflow as tf

        count = self.counts.get("val", 0)
        if not count:
            return None
        rows = self._rows("val")
        positions = tf.data.Dataset.range(count).batch(batch_size)
        given = self._batches(positions.map(lambda images: (images, images)),
                              lambda images, _: rows.read(images).astype(np.float32), targets)
        if not mirror:
            return given
        mirrored = self._batches(positions.map(lambda images: (images, images + count)),
                                 lambda _, images: rows.read(images).astype(np.float32), targets)
        return tf.data.Dataset.zip(given, mirrored).map(lambda a, b: ((a[0], b[0]), a[1]))

    def _batches(self, batches, read, targets: np.ndarray):
        """(inputs, one-hot) batches: ``read`` turns each batch of (image positions, extra) into rows, read from
        disk in a NumPy function; the targets are gathered by position."""
        import tensorflow as tf

        from transfer.data.pipeline import steady

        targets = tf.constant(np.asarray(targets, np.float32))
        shape = self.shape

        def load(images, extra):
            inputs = tf.numpy_function(read, [images, extra], tf.float32, stateful=False)
            inputs.set_shape((None, *shape))
            return inputs, tf.gather(targets, images)

        return steady(batches.map(load))
