"""Array datasets as a source: a ``.npz`` of arrays, or a CIFAR python archive, each by path or URL.

Each is written out as ``data/raw/<class>/<split>-<index>.png``, one lossless PNG per image, so every later
stage (and predict, export, the served model) reads it like any folder of photos. Grayscale images become RGB.
A data set that ships its own test split names those files ``test-<index>.png``, and download's report says
how many there are; split keeps them as the test split unless ``split.shipped_test`` is false.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer.errors import DataError
from transfer.io import shortened
from transfer.layout import SHIPPED_TEST_PREFIX, class_name_problem


@dataclass
class ArraySet:
    """Images as arrays: ``x`` (N, H, W[, C]), ``y`` class indices into ``classes``; the shipped test split
    in ``x_test``/``y_test``, or None when the data set has none."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def is_npz(path: Path) -> bool:
    return path.name.lower().endswith(".npz")


def _label_indices(y: np.ndarray, what: str, classes: list[str] | None) -> tuple[np.ndarray, list[str] | None]:
    """Class indices from labels given as integers (N,) or (N, 1), or as names (strings)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}; expected one label per image, (N,) or (N, 1)")
    if y.dtype.kind in "US":
        names = sorted({str(label) for label in y})
        if classes is not None:
            unknown = sorted(set(names) - set(classes))
            if unknown:
                raise DataError(f"{what} has labels that are not in classes: {', '.join(unknown[:5])}")
            names = classes
        lookup = {name: index for index, name in enumerate(names)}
        return np.array([lookup[str(label)] for label in y], dtype=np.int64), names
    if y.dtype.kind not in "iu":
        raise DataError(f"{what} holds {y.dtype} values; expected integer class indices or class names")
    if y.size and y.min() < 0:
        raise DataError(f"{what} holds a negative class index ({int(y.min())})")
    return y.astype(np.int64), classes


def arrays_from_npz(path: Path, max_bytes: int) -> ArraySet:
    """A ``.npz`` with arrays ``x`` and ``y`` (and optionally ``classes``), or Keras' own ``x_train``,
    ``y_train``, ``x_test``, ``y_test``. Never unpickles: object arrays are refused.

    Args:
        max_bytes: refuse a file whose arrays would take more than this in memory (``data.max_bytes``). A
            compressed ``.npz`` can unpack to far more than its size; each member is read no further than the
            size the zip's directory declares for it, so their sum bounds what loading it allocates.
    """
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable .npz file: not a zip archive of arrays (np.savez writes one)")
    try:
        with zipfile.ZipFile(path) as members:
            unpacked = sum(member.file_size for member in members.infolist())
            if unpacked > max_bytes:
                raise DataError(f"{path} unpacks to {unpacked} bytes of arrays, over data.max_bytes = {max_bytes}; "
                                "raise data.max_bytes to load it")
            for member in members.infolist():
                _check_declared(path, members, member)
        with np.load(path, allow_pickle=False) as bundle:
            arrays = {key: bundle[key] for key in bundle.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(f"{path} holds Python objects (pickled arrays), which are never loaded; store x, y "
                            "and classes as plain arrays (classes as strings)") from None
        raise DataError(f"{path} is not a readable .npz file: {error}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as error:  # a truncated or corrupted zip
        raise DataError(f"{path} is not a readable .npz file: {error or type(error).__name__}") from None
    if {"x", "y"} <= arrays.keys():
        x, y, x_test, y_test = arrays["x"], arrays["y"], None, None
    elif {"x_train", "y_train"} <= arrays.keys():
        x, y = arrays["x_train"], arrays["y_train"]
        x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
        if (x_test is None) != (y_test is None):
            raise DataError(f"{path} has only one of x_test and y_test; give both or neither")
    else:
        raise DataError(f"{path} holds arrays {', '.join(sorted(arrays)) or '(none)'}; expected x and y (and "
                        "optionally classes), or x_train, y_train, x_test, y_test")
    classes = None
    if "classes" in arrays:
        names = np.asarray(arrays["classes"])
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: classes must be a 1-D array of names, not {names.dtype} of shape {names.shape}")
        classes = [str(name) for name in names]
    y, classes = _label_indices(y, f"{path}: y", classes)
    if y_test is not None:
        y_test, _ = _label_indices(y_test, f"{path}: y_test", classes)
    if classes is None:
        top = int(max(y.max(initial=0), y_test.max(initial=0) if y_test is not None else 0))
        classes = [str(index) for index in range(top + 1)]
    return ArraySet(x=x, y=y, classes=classes, x_test=x_test, y_test=y_test)


def _check_declared(path: Path, members: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    """Refuse an array whose header declares more data than its member holds, before NumPy allocates for it: a
    few hundred bytes can declare an array of a terabyte, and ``np.load`` allocates the shape first."""
    if not member.filename.endswith(".npy"):
        return
    with members.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"{member.filename}: .npy format version {version} is not supported")
        shape, _, dtype = read_header(handle, max_header_size=10_000)
        header_bytes = handle.tell()
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > member.file_size - header_bytes:
        raise DataError(f"{path}: array {member.filename[:-4]!r} declares shape {tuple(shape)} of {dtype} "
                        f"({declared} bytes) but holds {member.file_size - header_bytes}: a broken or crafted file")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds (dicts, lists, strings, NumPy arrays) and nothing else: a pickle
    can name any callable, so an archive from elsewhere must not be trusted to name only these."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol 2 writes bytes: a string turned to bytes, no other effect
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> dict:
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a broken archive
        raise DataError(f"CIFAR batch {path.name} cannot be read: {error or type(error).__name__}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {path.name} holds a {type(batch).__name__}, not a dict")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def cifar_layout(folder: Path) -> str | None:
    """``"cifar10"`` or ``"cifar100"`` when ``folder`` is an extracted CIFAR python archive, else None."""
    if (folder / "batches.meta").is_file() and (folder / "data_batch_1").is_file():
        return "cifar10"
    if (folder / "meta").is_file() and (folder / "train").is_file() and (folder / "test").is_file():
        return "cifar100"
    return None


def _cifar_images(batch: dict, name: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        raise DataError(f"CIFAR batch {name} has no {'data' if 'data' not in batch else label_key}")
    # An array, as every CIFAR batch holds it: its pixels are bytes of the pickle itself. A list of rows could be
    # a few references to one row repeated (a 3.7 KB archive of 400,000 "images", 1.2 GB once converted).
    if not isinstance(batch["data"], np.ndarray):
        raise DataError(f"CIFAR batch {name} holds its data as a {type(batch['data']).__name__}, not an array: not a "
                        "CIFAR python batch")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR batch {name} has data of shape {data.shape}; expected (N, 3072)")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR batch {name} has {labels.size} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def arrays_from_cifar(folder: Path) -> ArraySet:
    """The CIFAR-10 or CIFAR-100 (fine labels) python archive, extracted into ``folder``."""
    layout = cifar_layout(folder)

    def names(meta: dict, key: str) -> list[str]:
        return [name.decode() if isinstance(name, bytes) else str(name) for name in meta.get(key, [])]

    if layout == "cifar10":
        classes = names(_cifar_batch(folder / "batches.meta"), "label_names")
        train = sorted(folder.glob("data_batch_*"), key=lambda path: path.name)
        parts = [_cifar_images(_cifar_batch(path), path.name, "labels") for path in train]
        test = _cifar_images(_cifar_batch(folder / "test_batch"), "test_batch", "labels") if (
            folder / "test_batch").is_file() else None
    elif layout == "cifar100":
        classes = names(_cifar_batch(folder / "meta"), "fine_label_names")
        parts = [_cifar_images(_cifar_batch(folder / "train"), "train", "fine_labels")]
        test = _cifar_images(_cifar_batch(folder / "test"), "test", "fine_labels")
    else:
        raise DataError(f"{folder} is not a CIFAR python archive")
    x = np.concatenate([part[0] for part in parts])
    y = np.concatenate([part[1] for part in parts])
    if not classes:
        raise DataError(f"the CIFAR archive's metadata in {folder} lists no class names")
    return ArraySet(x=x, y=y, classes=classes, x_test=None if test is None else test[0],
                    y_test=None if test is None else test[1])


def _check_names(classes: list[str]) -> None:
    for name in classes:
        problem = class_name_problem(name)
        if problem:
            raise DataError(f"class name {shortened(name)!r} cannot name a class folder: {problem}")
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    if repeated:
        raise DataError(f"class names repeat: {', '.join(repeated)}")


def as_rgb_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """Images (N, H, W), (N, H, W, 1), (N, H, W, 3) or (N, H, W, 4) as RGB uint8.

    Integers must lie in [0, 255]; floats are read as [0, 1] when none is above 1, else as [0, 255].
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or min(x.shape[1:3], default=0) < 1:
        raise DataError(f"{what} has shape {x.shape}; expected images (N, height, width) or (N, height, width, "
                        "channels) with 1, 3 or 4 channels")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{what} holds NaN or infinite values")
        scale = 255.0 if x.size and float(x.max()) <= 1.0 else 1.0
        x = np.rint(x * scale)
    elif x.dtype.kind not in "iub":
        raise DataError(f"{what} holds {x.dtype} values; expected pixel numbers")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DataError(f"{what} holds pixels outside [0, 255] (min {x.min()}, max {x.max()})")
    x = x.astype(np.uint8)
    if x.shape[-1] == 1:
        return np.repeat(x, 3, axis=-1)
    return x[..., :3]


def write_arrays(arrays: ArraySet, target: Path, workers: int = 4) -> tuple[list[str], int]:
    """Write every image as ``target/<class>/<train|test>-<index>.png``.

    Returns:
        (the class names used, sorted; how many images came from the shipped test split).
    """
    from PIL import Image

    _check_names(arrays.classes)
    parts = [("train", arrays.x, arrays.y)]
    if arrays.x_test is not None:
        parts.append((SHIPPED_TEST_PREFIX.rstrip("-"), arrays.x_test, arrays.y_test))
    jobs = []
    used: set[int] = set()
    for split, x, y in parts:
        x = as_rgb_uint8(x, f"the {split} images")
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise DataError(f"the {split} split has {len(x)} images and {len(y)} labels")
        if y.size and y.max() >= len(arrays.classes):
            raise DataError(f"the {split} labels go up to {int(y.max())}, but there are only "
                            f"{len(arrays.classes)} class names")
        used.update(int(label) for label in np.unique(y))
        width = max(5, len(str(len(x))))
        jobs += [(x[index], arrays.classes[int(y[index])], f"{split}-{index:0{width}d}.png") for index in range(len(x))]
    for index in sorted(used):
        (target / arrays.classes[index]).mkdir(parents=True, exist_ok=True)

    def save(job) -> None:
        pixels, label, name = job
        Image.fromarray(pixels).save(target / label / name, format="PNG")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(save, jobs))
    shipped_test = 0 if arrays.x_test is None else len(arrays.x_test)
    return sorted(arrays.classes[index] for index in used), shipped_test
