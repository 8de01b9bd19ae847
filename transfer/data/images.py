"""Image files: telling a decodable image from anything else before TensorFlow sees it, scanning
``data/raw`` into a class list and its images, and reading each photo's EXIF orientation.

The class list is data: :func:`scan_images` decides it once, split writes it to ``classes.json``, and every
later stage reads it from there, never from the folder names again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from transfer.data.headers import HeaderError, decoded_size
from transfer.errors import DataError
from transfer.layout import is_hidden, visible_files


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
