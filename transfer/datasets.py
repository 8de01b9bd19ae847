"""Images on disk: scanning and validating ``data/raw``, the stratified split, and ``tf.data`` input pipelines.

The class list is data: :func:`scan_images` decides it once, split writes it to ``classes.json``, and every
later stage reads it from there, never from the folder names again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import stat
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.errors import DataError
from transfer.headers import HeaderError, decoded_size
from transfer.io import (
    from_spreadsheet_safe,
    read_csv,
    read_json,
    read_table,
    spreadsheet_safe,
    write_csv,
    write_json,
)
from transfer.layout import is_hidden, visible_files
from transfer.params import AugmentParams

SPLITS = ("train", "val", "test")
CLASSES_FILE = "classes.json"


@dataclass
class ImageScan:
    """What :func:`scan_images` found under a raw folder.

    Attributes:
        classes: class names, in the order that defines the label indices.
        images: (relative path, class name, content digest) of every usable image.
        excluded: {"path", "reason"} for every file that is not used.
    """

    classes: list[str]
    images: list[tuple[str, str, str]] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)


# Formats that cameras and scanners produce but TensorFlow's decoder does not read, by their first bytes.
UNSUPPORTED_FORMATS = {b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"%PDF": "PDF"}
SUPPORTED = "JPEG, PNG, GIF, BMP or WebP"
# A decoded image takes 3 bytes a pixel, and its float copy 12: a crafted or gigapixel file must not exhaust
# memory before it can be refused.
MAX_PIXELS = 100_000_000
MIN_SIDE = 8  # pixels: a smaller image (a 1x1 tracking pixel, an icon) cannot show what a class looks like


def decode_problem(data: bytes) -> str | None:
    """Why these bytes cannot be used as an image by the pipeline's own decoder, or None if they can.

    The decoder reads the content, not the extension (a PNG named ``.jpg`` is fine) and gives RGB
    whatever the colour model: grayscale, CMYK, RGBA, palette and 16-bit images are converted.
    """
    import tensorflow as tf

    if not data:
        return "empty file"
    for magic, name in UNSUPPORTED_FORMATS.items():
        if data.startswith(magic):
            return f"{name} is not supported; convert it to {SUPPORTED}"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"):
        return f"HEIC is not supported; convert it to {SUPPORTED}"
    # The decode gate: the size comes from the header fields the decoder itself sizes its buffers by, and an
    # image whose size they do not give is never handed to the decoder.
    try:
        size = decoded_size(data)
    except HeaderError as error:
        return f"cannot be decoded as an image: {error}"
    if size.pixels > MAX_PIXELS:
        frames = "" if size.pixels == size.width * size.height else f" (its frames: {size.pixels} pixels in all)"
        return (f"{size.width}x{size.height} pixels{frames} is over the {MAX_PIXELS // 1_000_000}-megapixel bound; "
                "scale it down")
    if min(size.width, size.height) < MIN_SIDE:
        return (f"{size.width}x{size.height} pixels is below the {MIN_SIDE}x{MIN_SIDE} the pipeline accepts: too "
                "small to show a class")
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        # TF wraps the decoder's words in "{{function_node ...}} ... [Op:DecodeImage]"; keep the words.
        detail = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", error.message.splitlines()[0]).strip()
        return f"cannot be decoded as an image: {detail}"
    return None


def read_image_file(path: Path) -> tuple[str | None, bytes]:
    """(why the file cannot be used, or None; its bytes, empty when it cannot be read)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename it", b""
    try:
        kind = path.stat().st_mode  # through a link: what it points to
    except OSError as error:
        dangling = path.is_symlink() and isinstance(error, FileNotFoundError)
        return f"cannot be read: {'a link to a missing file' if dangling else error.strerror or error}", b""
    if not stat.S_ISREG(kind):
        # Opening a FIFO waits for a writer, and a device (/dev/zero) never ends: only plain files are read.
        what = "a FIFO" if stat.S_ISFIFO(kind) else "a device" if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) else \
            "a socket" if stat.S_ISSOCK(kind) else "a folder" if stat.S_ISDIR(kind) else "not a plain file"
        return f"cannot be read: {what}, not an image file", b""
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"cannot be read: {error.strerror or error}", b""
    return decode_problem(data), data


def _inspect(path: Path) -> tuple[str | None, str]:
    problem, data = read_image_file(path)
    return problem, hashlib.sha256(data).hexdigest() if data else ""


def scan_images(raw: Path, workers: int = 4) -> ImageScan:
    """List and decode every file under ``raw/<class>/``; keep the images, record why others were dropped.

    An image stored under two classes is ambiguous and dropped from both.
    """
    if not raw.is_dir():
        raise DataError(f"{raw} does not exist; run the download stage first")
    classes = sorted(child.name for child in raw.iterdir() if child.is_dir() and not is_hidden(child.name))
    files = [
        (path, name)
        for name in classes
        for path in visible_files(raw / name)
    ]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda item: _inspect(item[0]), files))
    scan = ImageScan(classes=classes)
    labels_of_digest: dict[str, set[str]] = {}
    for (path, name), (problem, digest) in zip(files, results, strict=True):
        relative = path.relative_to(raw).as_posix()
        if problem:
            scan.excluded.append({"path": relative, "reason": problem})
        else:
            scan.images.append((relative, name, digest))
            labels_of_digest.setdefault(digest, set()).add(name)
    ambiguous = {digest for digest, names in labels_of_digest.items() if len(names) > 1}
    for relative, _, digest in [image for image in scan.images if image[2] in ambiguous]:
        labels = ", ".join(sorted(labels_of_digest[digest]))
        scan.excluded.append({"path": relative, "reason": f"the same image is labelled {labels}"})
    scan.images = [image for image in scan.images if image[2] not in ambiguous]
    empty = [name for name in classes if not any(image[1] == name for image in scan.images)]
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} under {raw} hold no usable image")
    if len(classes) < 2:
        raise DataError(f"{raw} holds {len(classes)} class folder(s); a classifier needs at least two")
    return scan


def _count(fraction: float, total: int) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * total))


def stratified_split(
    images: list[tuple[str, str, str]], classes: list[str], val: float, test: float, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Split images per class into train/val/test with seeded, stable shuffles.

    Identical images (same digest) always land in the same split, so nothing leaks between splits.
    Each class is shuffled by its own generator, so adding a class does not reshuffle the others.

    Returns:
        {"train": [(path, class)], "val": [...], "test": [...]}, each sorted by path.
    """
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    for name in classes:
        groups: dict[str, list[str]] = {}
        for path, label, digest in images:
            if label == name:
                groups.setdefault(digest, []).append(path)
        ordered = sorted(groups.values())
        total = sum(len(group) for group in ordered)
        wanted = {"test": _count(test, total), "val": _count(val, total)}
        needed = 1 + (wanted["test"] > 0) + (wanted["val"] > 0)
        if len(ordered) < needed:
            raise DataError(
                f"class {name!r} has {len(ordered)} distinct image(s); split.val={val} and split.test={test} "
                f"need at least {needed}"
            )
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = [ordered[i] for i in rng.permutation(len(ordered))]
        for split in ("test", "val"):
            taken = 0
            # Leave at least one group for each split still to fill: val (if wanted) and train.
            reserve = 1 + (split == "test" and wanted["val"] > 0)
            while taken < wanted[split] and len(order) > reserve:
                group = order.pop()
                splits[split].extend((path, name) for path in group)
                taken += len(group)
        splits["train"].extend((path, name) for group in order for path in group)
    return {split: sorted(rows) for split, rows in splits.items()}


def split_keeping_test(
    images: list[tuple[str, str, str]], classes: list[str], val: float, seed: int, is_test
) -> dict[str, list[tuple[str, str]]]:
    """The test split a data set ships, kept as it is; val drawn per class (as :func:`stratified_split`) from
    the rest. ``is_test(path)`` says which images the data set ships as its test split."""
    shipped = sorted((path, label) for path, label, _ in images if is_test(path))
    splits = stratified_split([image for image in images if not is_test(image[0])], classes, val, 0.0, seed)
    return {**splits, "test": shipped}


def _curation_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a curation CSV, which must exist and hold ``columns`` (more are allowed)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: data.exclude and data.relabel name CSV files (a header line alone "
                        "changes nothing)")
    try:
        header, rows = read_table(path)
    except OSError as error:
        raise DataError(f"{path} cannot be read: {error}") from error
    missing = [column for column in columns if column not in header]
    if missing:
        raise DataError(f"{path} has no {' or '.join(repr(column) for column in missing)} column; its header is "
                        f"{','.join(header) or '(empty)'} and it needs {','.join(columns)}")
    return [{key: from_spreadsheet_safe((row.get(key) or "").strip()) for key in columns} for row in rows]


def curate(
    splits: dict[str, list[tuple[str, str]]], classes: list[str], exclude: Path, relabel: Path
) -> tuple[dict[str, list[tuple[str, str]]], dict]:
    """Apply the reviewed fixes to a drawn split: drop the images ``exclude`` lists, give those ``relabel`` lists
    their corrected class. Every other image keeps its split, so accuracy before and after is measured on the
    same test images, less those dropped from it. An image both excluded and relabelled is excluded.

    Returns:
        (the curated splits, {"exclude": path, "relabel": path, "excluded": {split: count},
        "relabelled": {split: count}, "excluded_files": [{"path", "reason"}]}).

    Raises:
        DataError: a file that is not an image of the data set (named with the first few), an unknown class,
            two different labels for one file, or a class left with no training image.
    """
    dropped = {row["file"] for row in _curation_rows(exclude, ("file",)) if row["file"]}
    corrections: dict[str, str] = {}
    for row in _curation_rows(relabel, ("file", "label")):
        if not row["file"]:
            continue
        if row["label"] not in classes:
            raise DataError(f"{relabel}: {row['file']} is relabelled {row['label']!r}, which is not a class; the "
                            f"classes are {', '.join(classes)}")
        if corrections.setdefault(row["file"], row["label"]) != row["label"]:
            raise DataError(f"{relabel}: {row['file']} is given two labels, {corrections[row['file']]!r} and "
                            f"{row['label']!r}")
    known = {path for rows in splits.values() for path, _ in rows}
    for listed, path in ((dropped, exclude), (set(corrections), relabel)):
        unknown = sorted(listed - known)
        if unknown:
            shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
            raise DataError(f"{path} names {len(unknown)} file(s) that are not images of this data set: {shown}; "
                            "paths are relative to data/raw, as reports/data_quality/*.csv writes them")
    curated: dict[str, list[tuple[str, str]]] = {}
    report = {"exclude": str(exclude), "relabel": str(relabel), "excluded": {}, "relabelled": {},
              "excluded_files": []}
    for split, rows in splits.items():
        kept = [(path, corrections.get(path, label)) for path, label in rows if path not in dropped]
        curated[split] = kept
        report["excluded"][split] = len(rows) - len(kept)
        report["relabelled"][split] = sum(1 for path, label in rows
                                          if path not in dropped and corrections.get(path, label) != label)
        report["excluded_files"] += [{"path": path, "reason": f"listed in {exclude}"}
                                     for path, _ in rows if path in dropped]
    empty = [name for name in classes if not any(label == name for _, label in curated["train"])]
    if empty:
        raise DataError(f"after {exclude} and {relabel}, class(es) {', '.join(empty)} have no training image; "
                        "keep at least one, or remove the class folder")
    return curated, report


def write_splits(folder: Path, splits: dict[str, list[tuple[str, str]]], classes: list[str]) -> None:
    """Write ``<split>.csv`` (path,label) for each split and the class order to ``classes.json``.

    A path or label that a spreadsheet would run as a formula (``=cmd|...``) is written as text, as the reports
    write it; :func:`split_rows` reads it back as it was.
    """
    for split, rows in splits.items():
        write_csv(folder / f"{split}.csv", ["path", "label"],
                  ([spreadsheet_safe(path), spreadsheet_safe(label)] for path, label in rows))
    write_json(folder / CLASSES_FILE, classes)


def split_rows(folder: Path, split: str) -> list[dict[str, str]]:
    """The (path, label) rows of ``<split>.csv`` as split wrote them, formula-safe cells back to their names."""
    path = folder / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the split stage first")
    return [{"path": from_spreadsheet_safe(row["path"]), "label": from_spreadsheet_safe(row["label"])}
            for row in read_csv(path)]


def read_classes(folder: Path) -> list[str]:
    path = folder / CLASSES_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the split stage first")
    return read_json(path)


def read_split(folder: Path, split: str, raw: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """The image paths (joined onto ``raw``) and integer labels of one split, in file order."""
    index = {name: i for i, name in enumerate(classes)}
    rows = split_rows(folder, split)
    unknown = sorted({row["label"] for row in rows} - index.keys())
    if unknown:
        raise DataError(f"{folder / f'{split}.csv'} has labels {unknown} that are not in {CLASSES_FILE}")
    paths = [str(raw / row["path"]) for row in rows]
    return paths, np.asarray([index[row["label"]] for row in rows], dtype=np.int32)


EXIF_ORIENTATION = 0x0112  # the EXIF tag: how the stored pixels must be turned to stand as the camera held them


def exif_orientation(source: Path | str | bytes) -> int:
    """The EXIF orientation of an image file or of encoded bytes: 1 (as stored) to 8; 1 when there is none.

    Phones store a portrait photo's pixels sideways and say so in this tag; every photo viewer turns it
    upright, and so does the pipeline (:func:`decode_resized`), in training, evaluation, predict and serving.
    Only the header is read.
    """
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 (no readable EXIF: the pixels stand as stored)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


@functools.cache
def _pillow():
    """Pillow's Image module, its DecompressionBombWarning silenced once for the process: only headers are read
    through it, and the decode gate (:func:`decode_problem`) bounds every image before it is decoded. A filter set
    once, not ``warnings.catch_warnings`` around each read, which is not thread-safe: headers are read from
    several threads, and an interleaved restore can leave every warning silenced."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def exif_orientations(paths: list[str], workers: int = 8) -> list[int]:
    """:func:`exif_orientation` of each file, in order (headers read in parallel)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(exif_orientation, paths))


# Every EXIF orientation is a transpose or not, then a reversal of none, one or both axes (Pillow's
# exif_transpose: 2 mirrors, 3 turns 180 degrees, 4 flips, 5 transposes, 6 turns 90 clockwise, 7 transverses,
# 8 turns 90 counter-clockwise). Row k is orientation k; row 0 stands for an unknown value, left as stored.
_TRANSPOSE = [False, False, False, False, False, True, True, True, True]
_REVERSE = [(False, False), (False, False), (False, True), (True, True), (True, False),
            (False, False), (False, True), (True, True), (True, False)]


def orient(image, orientation):
    """Decoded pixels [height, width, channels] turned as EXIF orientation ``orientation`` (1-8) says, as
    ``PIL.ImageOps.exif_transpose`` turns them. Table lookups and two ops, no control flow: inside ``tf.data``
    a ``tf.switch_case`` cost more than decoding the photo."""
    import tensorflow as tf

    index = tf.clip_by_value(tf.cast(orientation, tf.int32), 0, 8)
    perm = tf.gather(tf.constant([[1, 0, 2] if flag else [0, 1, 2] for flag in _TRANSPOSE]), index)
    dims = tf.gather(tf.constant([[rows, columns, False] for rows, columns in _REVERSE]), index)
    return tf.raw_ops.Reverse(tensor=tf.transpose(image, perm), dims=dims)


def load_image(path, image_size: tuple[int, int], orientation=None):
    """Read, decode (JPEG, PNG, GIF or BMP, whatever the extension), turn upright and resize one image to
    float32 RGB. ``orientation``: its EXIF orientation; None reads it from the file (``path`` a str)."""
    import tensorflow as tf

    if orientation is None:
        orientation = exif_orientation(path)
    return decode_resized(tf.io.read_file(path), image_size, orientation)


def decode_upright(data, orientation=1):
    """Encoded image bytes (JPEG, PNG, GIF or BMP) decoded to float32 RGB [height, width, 3], turned upright
    by their EXIF ``orientation`` (:func:`exif_orientation`; a Python 1 skips the turn)."""
    import tensorflow as tf

    # float32 before turning, as resizing gives anyway: oneDNN's uint8 kernels log an error line on some CPUs.
    image = tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32)
    image.set_shape([None, None, 3])
    if not (isinstance(orientation, int) and orientation == 1):
        image = orient(image, orientation)
        image.set_shape([None, None, 3])
    return image


def decode_resized(data, image_size: tuple[int, int], orientation=1):
    """Decode encoded image bytes upright (:func:`decode_upright`) and resize them, as every path (training,
    evaluation, predict, the served photo model) does."""
    import tensorflow as tf

    # Same op and method as the model's own Resizing layer, so training and serving see the same pixels.
    return tf.image.resize(decode_upright(data, orientation), image_size, method="bilinear")


def image_dataset(
    paths: list[str],
    image_size: tuple[int, int],
    batch_size: int,
    labels: np.ndarray | None = None,
    num_classes: int | None = None,
    shuffle_seed: int | None = None,
):
    """A batched, prefetched ``tf.data`` pipeline over image files, decoded in parallel, in a fixed order.

    Args:
        paths: image files.
        image_size: (height, width) to resize to.
        batch_size: images per batch.
        labels: integer labels to pair with the images, one-hot encoded to ``num_classes``; None for images only.
        num_classes: the number of classes, needed with ``labels``.
        shuffle_seed: shuffle every epoch with this seed; None keeps the file order (for features and scoring).
    """
    import tensorflow as tf

    # Each file's EXIF orientation, read once here from its header, travels with its path; when every photo
    # stands as stored (most sets), none is turned.
    orientations = np.asarray(exif_orientations(paths), np.int32)
    turn = bool((orientations != 1).any())
    dataset = tf.data.Dataset.from_tensor_slices((paths, orientations))
    if labels is not None:
        one_hot = tf.one_hot(labels, num_classes)
        dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensor_slices(one_hot)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    workers = cpu_count()
    if labels is None:
        dataset = dataset.map(lambda p, o: load_image(p, image_size, o if turn else 1), num_parallel_calls=workers)
    else:
        dataset = dataset.map(lambda file, y: (load_image(file[0], image_size, file[1] if turn else 1), y),
                              num_parallel_calls=workers)
    return steady(dataset.batch(batch_size))


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, which containers and schedulers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def steady(dataset):
    """``dataset`` prefetching two batches, with tf.data's autotuning off.

    Decoding on every CPU already keeps a backbone fed (measured: the consumer waits under 3% of the time).
    What autotuning adds is a cost at the end: destroying an autotuned iterator sometimes blocks for up to
    0.7 s, and extraction ends one per split, training one per epoch.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def data_report(scan: ImageScan, splits: dict[str, list[tuple[str, str]]], fetched: dict | None = None,
                curation: dict | None = None) -> dict:
    """What download and split found and did: counts per class and split, duplicates, every file left out.

    Args:
        scan: the validated images.
        splits: the split made of them.
        fetched: download's own report (``reports/download.json``), whose left-out labels CSV rows join the
            list of excluded files; None when there is none.
        curation: what :func:`curate` did; its excluded files join the list, its counts go in as ``curation``.
    """
    counts = {
        split: {name: sum(1 for _, label in rows if label == name) for name in scan.classes}
        for split, rows in splits.items()
    }
    paths_of: dict[str, list[str]] = {}
    for path, _, digest in scan.images:
        paths_of.setdefault(digest, []).append(path)
    duplicates = sorted(paths for paths in paths_of.values() if len(paths) > 1)
    fetched = fetched or {}
    excluded = [{**row, "stage": "download"} for row in fetched.get("excluded", [])]
    excluded += [{**row, "stage": "split"} for row in scan.excluded]
    curation = dict(curation or {})
    excluded += [{**row, "stage": "split"} for row in curation.pop("excluded_files", [])]
    return {
        "classes": scan.classes,
        "images": len(scan.images),
        "layout": fetched.get("layout", "class folders"),
        "split_sizes": {split: len(rows) for split, rows in splits.items()},
        "counts": counts,
        "duplicate_images": sum(len(paths) - 1 for paths in duplicates),
        "duplicates": duplicates,
        "excluded": excluded,
        "unlisted_by_labels_csv": fetched.get("unlisted", 0),
        "curation": curation or None,
    }


def augmenter(augment: AugmentParams, seed: int):
    """The training-time augmentation as a Keras pipeline, or None when every option is off."""
    import keras

    layers = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation, seed=seed + 1))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom, seed=seed + 2))
    # The pipeline augments raw pixels, before the model's own preprocessing: values in [0, 255].
    if augment.contrast:
        layers.append(keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed + 3))
    if augment.brightness:
        layers.append(keras.layers.RandomBrightness(augment.brightness, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augment") if layers else None
