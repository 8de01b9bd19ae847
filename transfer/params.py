"""Reading and validating ``params.yaml``: the one place that knows its keys, types and ranges.

Each stage builds a :class:`Params` once and passes it to the ``read_*`` functions below, which return
plain frozen dataclasses. :class:`Params` remembers every dotted key it handed out, which is how a test
proves that each stage reads exactly the params ``dvc.yaml`` declares for it.

The file is parsed as DVC parses it: YAML 1.2, with DVC's own parser (ruamel.yaml). A YAML 1.1 reader
such as PyYAML disagrees with DVC on values DVC itself writes: ``dvc exp run -S fine_tune.lr=0.00002``
writes ``2e-05``, a float to DVC and a string to PyYAML; ``yes``/``on`` are text to DVC and booleans to
PyYAML; ``010`` is 10 to DVC and 8 to PyYAML. With one reader, ``dvc params diff``, ``dvc exp show``, MLflow
and the stages all see the same values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfer.errors import ParamError

PARAMS_FILE = "params.yaml"
SEED_MAX = 2**32 - 1
MAX_IMAGE_SIDE = 2048  # pixels; the largest native size is 600 (EfficientNetB7)
CLASS_WEIGHTS = ("balanced", "none")
FEATURE_DTYPES = ("float16", "float32")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
UNFREEZE_ALL = "all"  # fine_tune.unfreeze: every layer of the backbone but BatchNormalization
# Files the pipeline reads besides the photos live here, each folder a DVC dependency of the stages that read
# it, so a file changed in place re-runs them (a path anywhere else would be a change DVC cannot see).
WEIGHTS_FOLDER = Path("inputs/weights")  # weights files given by path: extract-features, fine-tune
LABELS_FOLDER = Path("inputs/labels")  # labels CSVs kept outside the source: download

_MISSING = object()
# Words that YAML 1.1 readers take for booleans but YAML 1.2 (DVC's reading) leaves as text.
_YAML11_BOOLEANS = ("yes", "no", "on", "off", "y", "n")


def parse_params_text(text: str, source: str = PARAMS_FILE) -> Any:
    """Parse params YAML with DVC's parser and YAML version (1.2), so both read the same values.

    Raises:
        ParamError: the text is not valid YAML.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as error:
        raise ParamError(f"{source}: not valid YAML: {' '.join(str(error).split())}") from None


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The parsed params tree of a file (see :func:`parse_params_text`); an empty file is an empty mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamError(f"{path}: no such params file (run the stages from the repository root)") from None
    return parse_params_text(text, str(path)) or {}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys: {"head": {"lr": 0.001}} -> {"head.lr": 0.001}. An empty mapping is a leaf
    (its key is kept, with the value {}), so that no key written in the file goes missing."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_written_hint(value: Any) -> str:
    """Why a text value may have been meant as something else, and what to write instead; or ''."""
    if not isinstance(value, str):
        return ""
    if value.strip().lower() in _YAML11_BOOLEANS:
        return f" (YAML 1.2, which DVC reads, takes {value!r} as text: write true or false)"
    try:
        float(value)
    except ValueError:
        return ""
    return f" (it is quoted, so it is text: write {value.strip()} without quotes)"


def repository_root() -> Path:
    """The main repository's root: ``DVC_ROOT`` inside a stage, else the working directory.

    DVC sets ``DVC_ROOT`` to the main repository's root for every stage, also for queued experiments that
    run in a temporary copy, so paths anchored here mean the same file wherever the stage runs.
    """
    return Path(os.environ.get("DVC_ROOT", "."))


def repo_path(value: str) -> Path:
    """A file path given in params.yaml: relative paths are relative to :func:`repository_root`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else repository_root() / path


def input_file(key: str, value: str, folder: Path, source: str = PARAMS_FILE) -> Path:
    """A file named by param ``key`` that must lie in ``folder`` (relative to the stage's directory).

    Relative paths are read from the working directory, not :func:`repository_root`: a queued experiment
    reads its own copy, the one DVC hashed (a file in git, or added with ``dvc add``). The file itself may be
    a link; the folders on its path may not lead out of ``folder``.

    Raises:
        ParamError: the path lies outside ``folder``.
    """
    given = Path(value).expanduser()
    path = given if given.is_absolute() else Path.cwd() / given
    home = (Path.cwd() / folder).resolve()
    if not path.parent.resolve().is_relative_to(home):
        raise ParamError(
            f"{source}: {key} = {value!r} is invalid: expected a file in {folder.as_posix()}/, a DVC dependency "
            f"of the stages that read it, so that a file changed in place re-runs them (copy it there, then "
            f"`dvc add` it and commit its .dvc pointer, so that queued experiments see it too)"
        )
    return path


class Params:
    """A read-only view of the params tree that validates each value as it is read.

    Args:
        tree: the parsed YAML mapping.
        source: where it came from, named in error messages.
    """

    def __init__(self, tree: dict[str, Any], source: str = PARAMS_FILE):
        if not isinstance(tree, dict):
            raise ParamError(f"{source}: expected a mapping of params at the top level")
        self._tree = tree
        self.source = source
        self.keys_read: set[str] = set()

    @property
    def tree(self) -> dict[str, Any]:
        """The parsed mapping, as loaded."""
        return self._tree

    @classmethod
    def load(cls, path: str | Path = PARAMS_FILE) -> Params:
        """Parse a params file; a missing or malformed file is a :class:`ParamError`."""
        return cls(read_params_file(path), source=str(path))

    def value(self, key: str) -> Any:
        """The raw leaf value at a dotted key."""
        node: Any = self._tree
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is _MISSING:
                raise ParamError(f"{self.source}: missing key '{key}'")
        if isinstance(node, dict):
            raise ParamError(f"{self.source}: '{key}' is a section; read its keys one by one")
        self.keys_read.add(key)
        return node

    def fail(self, key: str, value: Any, expected: str) -> ParamError:
        """The error for a bad value: names the key, the value as written, what is allowed and what to write."""
        return ParamError(f"{self.source}: {key} = {value!r} is invalid: expected {expected}{_as_written_hint(value)}")

    def int(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        """An integer; a whole number in float form (``2e10``, as ``-S`` may write it) counts as one."""
        value = self.value(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            bounds = (f" in [{minimum}, {maximum}]" if maximum is not None else
                      f" >= {minimum}" if minimum is not None else "")
            raise self.fail(key, self.value(key), "an integer" + bounds)
        return value

    def seed(self) -> int:
        """The run's seed: what NumPy's and TensorFlow's generators take, 0 to 2**32 - 1."""
        return self.int("seed", minimum=0, maximum=SEED_MAX)

    def number(self, key: str, low: float, high: float, high_open: bool = False) -> float:
        """A number in [low, high], or [low, high) when ``high_open``."""
        value = self.value(key)
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not valid or value < low or value > high or (high_open and value == high):
            raise self.fail(key, value, f"a number in [{low}, {high}{')' if high_open else ']'}")
        return float(value)

    def positive(self, key: str) -> float:
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise self.fail(key, value, "a positive number")
        return float(value)

    def bool(self, key: str) -> bool:
        value = self.value(key)
        if not isinstance(value, bool):
            raise self.fail(key, value, "true or false")
        return value

    def choice(self, key: str, choices: Sequence[str]) -> str:
        value = self.value(key)
        if value not in choices:
            raise self.fail(key, value, "one of " + ", ".join(choices))
        return value

    def text(self, key: str, optional: bool = False) -> str | None:
        value = self.value(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, value, "a non-empty string" + (" or null" if optional else ""))
        return value

    def int_list(self, key: str, minimum: int) -> tuple[int, ...]:
        value = self.value(key)
        if not isinstance(value, list) or any(
            isinstance(item, bool) or not isinstance(item, int) or item < minimum for item in value
        ):
            raise self.fail(key, value, f"a list of integers >= {minimum}, such as [128] or []")
        return tuple(value)


@dataclass(frozen=True)
class DataParams:
    """Where the photos come from.

    Attributes:
        source: a URL, a local archive or a local folder.
        sha256: the archive's expected checksum, or None.
        labels_csv: None for one folder per class; else a CSV (inside the source, or in
            :data:`LABELS_FOLDER`) that labels a flat folder of images.
        max_bytes: the most an archive may unpack to, a download may weigh, or a .npz's arrays may take.
    """

    source: str
    sha256: str | None
    labels_csv: str | None
    max_bytes: int


@dataclass(frozen=True)
class SplitParams:
    """The fractions of each class drawn for val and test; ``shipped_test``: keep the test split a data set
    ships (CIFAR-10, MNIST...) as the test split, drawing only val from the rest (``test`` then unused)."""

    val: float
    test: float
    shipped_test: bool = True


@dataclass(frozen=True)
class CurationParams:
    """The reviewed fixes to the data set, which split applies after drawing the split.

    Attributes:
        exclude: a CSV whose ``file`` column names images to leave out (paths relative to ``data/raw``).
        relabel: a CSV whose ``file`` and ``label`` columns give images their corrected class.
    """

    exclude: str
    relabel: str


@dataclass(frozen=True)
class QualityParams:
    """The data-quality report train-head writes from the cached features (``reports/data_quality``).

    Attributes:
        folds: k of the k-fold out-of-fold probabilities.
        duplicate_ratio: how much closer than its usual neighbours an image's near-duplicate is, at most: the
            pair's thumbnail distance over the images' usual distance (see :mod:`transfer.quality`).
        gallery: images shown in each of the label-suspect and outlier figures.
        report: whether to make the report at all (off: the folder says so, and nothing in it is checked).
    """

    folds: int
    duplicate_ratio: float
    gallery: int
    report: bool = True


@dataclass(frozen=True)
class FeatureParams:
    """How the bottleneck features are computed and stored.

    Attributes:
        batch_size: images per forward pass.
        dtype: the stored dtype, ``float16`` or ``float32``.
        mirror: each image's features averaged with its horizontal mirror's, in the cache and in the saved model.
        train_views: augmented copies of each training image extracted besides it, for the head to train on.
        view_augment: the random changes that make those copies, and the trunk's.
        trunk_views: augmented copies of each training image put through the frozen trunk, for fine-tune to
            train on (:mod:`transfer.trunk`).
    """

    batch_size: int
    dtype: str
    mirror: bool = False
    train_views: int = 0
    view_augment: AugmentParams | None = None
    trunk_views: int = 0


@dataclass(frozen=True)
class TrainingParams:
    """What fitting a model needs, shared by the head and fine-tune stages.

    Attributes:
        lr: the learning rate; with ``schedule: cosine``, its peak.
        epochs: the most epochs to train (early stopping may end sooner).
        batch_size: examples per step.
        patience: trained epochs in a row without a better validation loss than the best trained epoch
            before training stops (a better epoch 0 decides what is kept, not when to stop).
        label_smoothing: the cross-entropy's label smoothing.
        class_weight: ``balanced`` or ``none``.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        weight_decay: AdamW's decoupled weight decay (unused by Adam).
        schedule: ``constant``, or ``cosine``: a linear warmup to ``lr`` over ``warmup_epochs``, then a cosine
            decay to zero at ``epochs``.
        warmup_epochs: epochs of linear warmup before the cosine decay.
    """

    lr: float
    epochs: int
    batch_size: int
    patience: int
    label_smoothing: float
    class_weight: str
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0


@dataclass(frozen=True)
class HeadParams:
    """The head's layout and fitting.

    Attributes:
        hidden: widths of the hidden Dense layers.
        dropout: the dropout rate after each hidden layer, or on the features when there is none.
        batchnorm: normalise the features first.
        training: how it is fitted.
        search: settings to try on the validation split, these first (0 or 1: these only).
    """

    hidden: tuple[int, ...]
    dropout: float
    batchnorm: bool
    training: TrainingParams
    search: int = 0


@dataclass(frozen=True)
class AugmentParams:
    """Random changes to each training image, made on raw pixels before the backbone's preprocessing.

    Attributes:
        flip: horizontal flips.
        rotation: a fraction of a full turn, both ways.
        zoom: a fraction, in and out.
        contrast: a factor; contrast is scaled by a random value in [1 - contrast, 1 + contrast].
        brightness: a fraction of the pixel range added or subtracted.
    """

    flip: bool
    rotation: float
    zoom: float
    contrast: float
    brightness: float


@dataclass(frozen=True)
class FineTuneParams:
    """The top of the backbone, trained end to end with the head.

    Attributes:
        unfreeze: top layers to train: a number, a layer name, or ``all``.
        augment: random changes to each training image.
        training: the optimiser, schedule, epochs and early stopping.
        trunk_cache: train the top from the frozen trunk's output that extract-features cached
            (:mod:`transfer.trunk`); its augmentation is then the cache's (flips, and the copies of
            ``features.trunk_views``), and ``augment`` other than ``flip`` is not used. False: every epoch through
            the whole backbone, with ``augment``'s random changes.
        blend: how far the saved weights go from the head's start toward the kept epoch's (1: all the way).
    """

    unfreeze: int | str
    augment: AugmentParams
    training: TrainingParams
    trunk_cache: bool = True
    blend: float = 1.0


@dataclass(frozen=True)
class EvaluateParams:
    """How the test split is scored, and which of the costlier reports to add.

    Attributes:
        batch_size: images per forward pass.
        top_k: k of the top-k accuracy.
        tta: average each image's probabilities with its horizontal flip's (twice the forward passes).
        temperature_scaling: fit a temperature on the validation split and report calibration after it.
        gradcam: how many test images (half right, half wrong where possible) get a Grad-CAM heatmap; 0: none.
    """

    batch_size: int
    top_k: int
    tta: bool
    temperature_scaling: bool
    gradcam: int


# Array data sets that keras.datasets knows by name, by the URL the pipeline takes instead: download's DVC
# dependency is data.source itself, which must be a URL or a path DVC can hash.
KERAS_DATASET_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
}


def read_data(params: Params) -> DataParams:
    source = params.text("data.source")
    if source.startswith("keras:"):
        known = KERAS_DATASET_URLS.get(source[len("keras:"):])
        raise params.fail("data.source", source, (
            f"a URL or a path, which DVC can track; for this data set: {known}" if known else
            "a URL or a path, which DVC can track; for the arrays Keras names: "
            + ", ".join(f"{name}: {url}" for name, url in KERAS_DATASET_URLS.items())))
    sha256 = params.text("data.sha256", optional=True)
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise params.fail("data.sha256", sha256, "64 hexadecimal digits or null")
    return DataParams(
        source=source,
        sha256=sha256 and sha256.lower(),
        labels_csv=params.text("data.labels_csv", optional=True),
        max_bytes=params.int("data.max_bytes", minimum=1),
    )


def read_split(params: Params) -> SplitParams:
    val = params.number("split.val", 0.0, 1.0, high_open=True)
    test = params.number("split.test", 0.0, 1.0, high_open=True)
    if val + test >= 1.0:
        raise params.fail("split.test", test, f"split.val + split.test below 1 (split.val is {val})")
    return SplitParams(val=val, test=test, shipped_test=params.bool("split.shipped_test"))


def read_curation(params: Params) -> CurationParams:
    """``data.exclude`` and ``data.relabel``: paths of CSV files (DVC dependencies of split, so always given)."""
    paths = {}
    for key in ("data.exclude", "data.relabel"):
        value = params.value(key)
        if not isinstance(value, str) or not value.strip():
            raise params.fail(key, value, "the path of a CSV file (one with only its header changes nothing); "
                              "DVC tracks it, so it cannot be null")
        paths[key] = value.strip()
    return CurationParams(exclude=paths["data.exclude"], relabel=paths["data.relabel"])


def read_quality(params: Params) -> QualityParams:
    return QualityParams(
        folds=params.int("quality.folds", minimum=2, maximum=100),
        duplicate_ratio=params.number("quality.duplicate_ratio", 0.0, 1.0),
        gallery=params.int("quality.gallery", minimum=0, maximum=200),
        report=params.bool("quality.report"),
    )


MAX_TRAIN_VIEWS = 32


def read_features(params: Params) -> FeatureParams:
    return FeatureParams(
        batch_size=params.int("features.batch_size", minimum=1),
        dtype=params.choice("features.dtype", FEATURE_DTYPES),
        mirror=params.bool("features.mirror"),
        train_views=params.int("features.train_views", minimum=0, maximum=MAX_TRAIN_VIEWS),
        view_augment=read_augment(params, "features.view_augment"),
        trunk_views=params.int("features.trunk_views", minimum=0, maximum=MAX_TRAIN_VIEWS),
    )


def read_augment(params: Params, section: str) -> AugmentParams:
    """Random changes to training images, from ``section`` (``fine_tune.augment``, ``features.view_augment``)."""
    return AugmentParams(
        flip=params.bool(f"{section}.flip"),
        rotation=params.number(f"{section}.rotation", 0.0, 0.5),
        zoom=params.number(f"{section}.zoom", 0.0, 0.9),
        contrast=params.number(f"{section}.contrast", 0.0, 1.0, high_open=True),
        brightness=params.number(f"{section}.brightness", 0.0, 1.0, high_open=True),
    )


def read_training(params: Params, section: str, min_epochs: int) -> TrainingParams:
    """The fitting params common to ``head`` and ``fine_tune``."""
    return TrainingParams(
        lr=params.positive(f"{section}.lr"),
        epochs=params.int(f"{section}.epochs", minimum=min_epochs),
        batch_size=params.int(f"{section}.batch_size", minimum=1),
        patience=params.int(f"{section}.patience", minimum=0),
        label_smoothing=params.number(f"{section}.label_smoothing", 0.0, 1.0, high_open=True),
        class_weight=params.choice(f"{section}.class_weight", CLASS_WEIGHTS),
        optimizer=params.choice(f"{section}.optimizer", OPTIMIZERS),
        weight_decay=params.number(f"{section}.weight_decay", 0.0, 1.0),
        schedule=params.choice(f"{section}.schedule", SCHEDULES),
        warmup_epochs=params.int(f"{section}.warmup_epochs", minimum=0),
    )


def read_head(params: Params) -> HeadParams:
    return HeadParams(
        hidden=params.int_list("head.hidden", minimum=1),
        dropout=params.number("head.dropout", 0.0, 1.0, high_open=True),
        batchnorm=params.bool("head.batchnorm"),
        training=read_training(params, "head", min_epochs=1),
        search=params.int("head.search", minimum=0),
    )


def read_unfreeze(params: Params) -> int | str:
    """``fine_tune.unfreeze``: read by fine-tune, and by extract-features, which cuts the trunk cache there."""
    unfreeze = params.value("fine_tune.unfreeze")
    if isinstance(unfreeze, float) and unfreeze.is_integer():
        unfreeze = int(unfreeze)
    if isinstance(unfreeze, bool) or not isinstance(unfreeze, (int, str)) or (
        isinstance(unfreeze, int) and unfreeze < 0
    ):
        raise params.fail("fine_tune.unfreeze", unfreeze,
                          f"{UNFREEZE_ALL}, a number of top layers >= 0, or a layer name")
    return unfreeze


def read_fine_tune(params: Params) -> FineTuneParams:
    unfreeze = read_unfreeze(params)
    augment = read_augment(params, "fine_tune.augment")
    trunk_cache = params.bool("fine_tune.trunk_cache")
    return FineTuneParams(unfreeze=unfreeze, augment=augment, trunk_cache=trunk_cache,
                          training=read_training(params, "fine_tune", min_epochs=0),
                          blend=params.number("fine_tune.blend", 0.0, 1.0))


def read_evaluate(params: Params) -> EvaluateParams:
    return EvaluateParams(
        batch_size=params.int("evaluate.batch_size", minimum=1),
        top_k=params.int("evaluate.top_k", minimum=1),
        tta=params.bool("evaluate.tta"),
        temperature_scaling=params.bool("evaluate.temperature_scaling"),
        gradcam=params.int("evaluate.gradcam", minimum=0),
    )


@dataclass(frozen=True)
class DistributeParams:
    """Where the stages that run a model run it (extract-features, train-head, fine-tune).

    Attributes:
        strategy: ``auto`` (every GPU of this host when there are two or more, else one device), ``default``
            (one device), ``mirrored`` (every GPU of this host, or every logical CPU device when there is no
            GPU) or ``multi_worker`` (every host named in ``TF_CONFIG``).
        mixed_precision: ``auto`` (float16 compute on GPUs, float32 on CPUs), True or False.
    """

    strategy: str
    mixed_precision: bool | str


def read_distribute(params: Params) -> DistributeParams:
    precision = params.value("mixed_precision")
    if precision != "auto" and not isinstance(precision, bool):
        raise params.fail("mixed_precision", precision, "auto, true or false")
    return DistributeParams(strategy=params.choice("strategy", STRATEGIES), mixed_precision=precision)


@dataclass(frozen=True)
class BackboneParams:
    """The top-level ``backbone``, ``weights`` and ``image_size``, checked for type only.

    The registry in :mod:`transfer.backbones` checks them against what each backbone accepts.
    """

    name: str
    weights: str
    image_size: tuple[int, int] | None
    layer: str | None = None  # features.layer: cut the backbone at this layer (None: its last)


def read_backbone(params: Params) -> BackboneParams:
    size = params.value("image_size")
    if size is not None:
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size)
        ):
            raise params.fail("image_size", params.value("image_size"), "null, a positive integer, or [height, width]")
        if max(size) > MAX_IMAGE_SIDE:
            raise params.fail("image_size", params.value("image_size"),
                              f"sides of at most {MAX_IMAGE_SIDE} pixels (a batch of 32 at 20000 would need 143 GiB); "
                              "null gives the backbone's default size")
        size = (size[0], size[1])
    weights = params.text("weights").strip()
    if weights.lower() not in ("imagenet", "none"):
        input_file("weights", weights, WEIGHTS_FOLDER, params.source)
    layer = params.text("features.layer", optional=True)
    return BackboneParams(name=params.text("backbone"), weights=weights, image_size=size,
                          layer=layer.strip() if layer else None)
