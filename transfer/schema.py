"""The sections of ``params.yaml`` as typed settings: a frozen dataclass for each, beside the ``read_*``
function that builds it from :class:`~transfer.params.Params` with its keys' types and ranges.

Each stage passes its :class:`~transfer.params.Params` to the ``read_*`` functions of the sections it uses and
gets plain values back; nothing else in the package reads ``params.yaml`` keys. It is one module because it is
one thing, the schema: every key's type, range and meaning in one place, in the order of the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from transfer.params import WEIGHTS_FOLDER, Params, input_file

MAX_IMAGE_SIDE = 2048  # pixels; the largest native size is 600 (EfficientNetB7)
CLASS_WEIGHTS = ("balanced", "none")
FEATURE_DTYPES = ("float16", "float32")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
UNFREEZE_ALL = "all"  # fine_tune.unfreeze: every layer of the backbone but BatchNormalization


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
            pair's thumbnail distance over the images' usual distance (see :mod:`transfer.data.duplicates`).
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
            train on (:mod:`transfer.model.trunk`).
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
            (:mod:`transfer.model.trunk`); its augmentation is then the cache's (flips, and the copies of
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

    The registry in :mod:`transfer.model.registry` checks them against what each backbone accepts.
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
