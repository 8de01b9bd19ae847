"""Getting a dataset into ``data/raw/<class>/``: from a URL, a local archive, or a local folder.

The images come as one subfolder per class, or as a flat folder labelled by a CSV (``data.labels_csv``).
Array data sets (a ``.npz``, a CIFAR python archive) are written out as PNGs by
:mod:`transfer.data.arrays`. Downloads are checked against ``data.sha256`` when it is set, archives are unpacked
by :mod:`transfer.data.archives`, and the result appears under its final name only when it is complete.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from transfer.data.archives import ARCHIVE_SUFFIXES, TooLarge, extract
from transfer.data.arrays import ArraySet, arrays_from_cifar, arrays_from_npz, cifar_layout, is_npz, write_arrays
from transfer.data.labels_csv import arrange_by_label, locate_labels_csv
from transfer.errors import DataError
from transfer.io import atomic_path, scratch_folder
from transfer.layout import is_hidden
from transfer.params import repo_path
from transfer.schema import DataParams

log = logging.getLogger(__name__)
DOWNLOAD_ATTEMPTS = 3
CHUNK_BYTES = 1 << 20


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, destination: Path, max_bytes: int) -> None:
    """Download ``url`` to ``destination`` with a progress bar, retrying on network errors.

    A download cut short (fewer bytes than the server's Content-Length) is an error, never a result; one
    heavier than ``max_bytes`` is refused.
    """
    from tqdm import tqdm

    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:
                expected = int(response.headers.get("Content-Length") or 0) or None
                if expected is not None and expected > max_bytes:
                    raise TooLarge(f"data.source {url} is {expected} bytes, over data.max_bytes = {max_bytes}")
                with tqdm(total=expected, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar:
                    received = 0
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                        if received > max_bytes:
                            raise TooLarge(f"data.source {url} passed data.max_bytes = {max_bytes} bytes")
            if expected is not None and received != expected:
                raise DataError(f"download of {url} stopped at {received} of {expected} bytes")
            return
        except (urllib.error.URLError, http.client.HTTPException, OSError, DataError) as error:
            if isinstance(error, TooLarge):
                raise
            if attempt == DOWNLOAD_ATTEMPTS:
                raise DataError(
                    f"cannot download data.source {url}: {error or type(error).__name__}; offline, set data.source "
                    "to a local archive (.tgz, .tar.gz, .tar, .zip) or a folder with one subfolder per class"
                ) from None
            log.warning("download attempt %d failed (%s); retrying", attempt, error or type(error).__name__)
            time.sleep(2**attempt)


def unwrap(folder: Path) -> Path:
    """Descend through single wrapper folders (``flower_photos/``, ``dataset-v2/``) to the real top."""
    while True:
        children = [child for child in folder.iterdir() if not is_hidden(child.name)]
        if len(children) == 1 and children[0].is_dir():
            folder = children[0]
            continue
        return folder


def find_class_root(folder: Path) -> Path:
    """The folder whose subfolders are the classes: descends through single wrapper folders like ``flower_photos/``."""
    top, folder = folder, unwrap(folder)
    subfolders = [child for child in folder.iterdir()
                  if child.is_dir() and not child.is_symlink() and not is_hidden(child.name)]
    files = [child for child in folder.iterdir() if child.is_file() and not is_hidden(child.name)]
    if not subfolders and files and folder != top:
        # One folder of images under the source: unwrapped as a wrapper, it is really a single class.
        raise DataError(
            f"the source holds a single class folder, {folder.name!r} ({len(files)} files): a classifier needs at "
            "least two classes, each in a subfolder named after it (or set data.labels_csv for a flat folder)"
        )
    if len(subfolders) < 2:
        links = [child.name for child in folder.iterdir() if child.is_symlink() and child.is_dir()]
        raise DataError(
            f"{folder} holds {len(subfolders)} class folder(s); expected one subfolder per class "
            "(at least two), each holding that class's images, or set data.labels_csv for a flat folder"
            + (f" (links to folders are not followed: {', '.join(sorted(links))}; copy the folders in)"
               if links else "")
        )
    return folder


_FOLDER_LINK = "a link to a folder: not followed (links to folders can loop or repeat a tree)"


def _copy_tree(root: Path, folder: Path, target: Path, left_out: list[dict[str, str]], budget: list[int]) -> None:
    """Copy ``folder`` (under the source ``root``) into ``target``: plain files and folders as they are, a link
    to a file inside the source as that file. Never followed, each listed in ``left_out`` with its reason:
    links to folders (they can loop, or pull in a whole other tree), links that lead out of the source or
    nowhere, and devices, pipes and sockets. The walk is the source's own tree, so it ends; ``budget`` (bytes
    left, a one-item list) bounds what it copies.
    """
    target.mkdir()
    for entry in sorted(os.scandir(folder), key=lambda item: item.name):
        if is_hidden(entry.name):
            continue
        path = Path(entry.path)
        reason = None
        if entry.is_symlink():
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):  # a dangling link, or a loop of links
                reason = "a link that leads nowhere (or to itself)"
            else:
                if not real.is_relative_to(root.resolve()):
                    reason = f"a link that leads out of the source, to {real}"
                elif real.is_dir():
                    reason = _FOLDER_LINK
                elif not real.is_file():
                    reason = "a link to a device, pipe or socket"
        elif entry.is_dir(follow_symlinks=False):
            _copy_tree(root, path, target / entry.name, left_out, budget)
            continue
        elif not entry.is_file(follow_symlinks=False):
            reason = "not a regular file (a device, pipe or socket)"
        if reason is not None:
            left_out.append({"path": path.relative_to(root).as_posix(), "reason": reason})
            continue
        budget[0] -= path.stat().st_size
        if budget[0] < 0:
            raise DataError(f"data.source {root} holds more than data.max_bytes; raise data.max_bytes to use it all")
        shutil.copyfile(path, target / entry.name)


def copy_classes(root: Path, target: Path, max_bytes: int) -> tuple[list[str], list[dict[str, str]]]:
    """Copy each non-hidden class folder of ``root`` into ``target``, leaving hidden entries behind, as plain
    files (see :func:`_copy_tree` for links), at most ``max_bytes`` in all.

    Returns:
        (the class folder names copied, sorted; {"path", "reason"} of each entry left out).
    """
    classes = sorted(child.name for child in root.iterdir()
                     if child.is_dir() and not child.is_symlink() and not is_hidden(child.name))
    left_out = [{"path": child.name, "reason": _FOLDER_LINK}
                for child in sorted(root.iterdir()) if child.is_symlink() and child.is_dir()]
    # A folder named only of dots (``...``) reads as hidden, like .ipynb_checkpoints, but was hardly meant to be.
    left_out += [{"path": child.name, "reason": "a folder named only of dots is hidden, not a class; rename it"}
                 for child in sorted(root.iterdir())
                 if child.is_dir() and not child.is_symlink() and not child.name.strip(".")]
    budget = [max_bytes]
    for name in classes:
        _copy_tree(root, root / name, target / name, left_out, budget)
    return classes, left_out


@dataclass
class Fetched:
    """What :func:`fetch` put in the target.

    Attributes:
        classes: the class folder names, sorted.
        layout: ``"class folders"`` or ``"labels CSV <name>"``.
        excluded: {"path", "reason"} for each labels CSV row that gave no image, and each link (or device)
            in a source folder that was not followed.
        unlisted: files beside the labelled images that the labels CSV does not name.
        shipped_test: images of the test split the data set ships (array sources), named ``test-*``.
    """

    classes: list[str]
    layout: str
    excluded: list[dict[str, str]] = field(default_factory=list)
    unlisted: int = 0
    shipped_test: int = 0


def _local_source(source: str) -> Path:
    path = repo_path(source)
    if not path.exists():
        raise DataError(f"data.source = {source!r} is invalid: no such file or folder (looked for {path.resolve()})")
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES) and not is_npz(path):
        raise DataError(
            f"data.source = {source!r} is invalid: expected a URL, a folder, an archive ending in "
            f"{', '.join(ARCHIVE_SUFFIXES)}, or a .npz of arrays"
        )
    return path


def _no_extras(data: DataParams, kind: str) -> None:
    if data.labels_csv is not None:
        raise DataError(f"data.labels_csv = {data.labels_csv!r} does not apply: data.source = {data.source!r} is "
                        f"{kind}, which holds its own labels; set data.labels_csv to null")


def _write(arrays: ArraySet, target: Path, layout: str) -> Fetched:
    with atomic_path(target) as staging:
        staging.mkdir()
        classes, shipped_test = write_arrays(arrays, staging)
    return Fetched(classes=classes, layout=layout, shipped_test=shipped_test)


def fetch(data: DataParams, target: Path) -> Fetched:
    """Materialise ``data.source`` as ``target/<class>/<images>``, whole or not at all.

    Args:
        data: the source (URL, local archive or folder, .npz, CIFAR python archive), its checksum, the labels
            CSV if the images are not filed by class, and the size bound.
        target: the folder to create (replaced if it exists; untouched on any error).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with scratch_folder(target.with_name(f"{target.name}-fetch")) as scratch:
        if is_url(data.source):
            # Keep the name's extension: it tells a .npz from an archive.
            archive = scratch / ("download.npz" if is_npz(Path(data.source.split("?")[0])) else "download")
            download(data.source, archive, data.max_bytes)
        else:
            archive = _local_source(data.source)
        if archive.is_dir():
            if data.sha256:
                raise DataError(f"data.sha256 is set but data.source = {data.source!r} is a folder; set it to null")
            root = archive
        else:
            if data.sha256:
                actual = sha256_of(archive)
                if actual != data.sha256:
                    raise DataError(
                        f"checksum mismatch for {data.source}: data.sha256 is {data.sha256}, the file has {actual}"
                    )
            if is_npz(archive):
                _no_extras(data, "a .npz of arrays")
                return _write(arrays_from_npz(archive, data.max_bytes), target, "arrays (.npz)")
            extract(archive, scratch / "extracted", data.max_bytes)
            root = scratch / "extracted"
            cifar = cifar_layout(unwrap(root))
            if cifar is not None:
                _no_extras(data, "a CIFAR archive")
                return _write(arrays_from_cifar(unwrap(root)), target, f"{cifar} python archive")
        with atomic_path(target) as staging:
            staging.mkdir()
            if data.labels_csv is None:
                classes, left_out = copy_classes(find_class_root(root), staging, data.max_bytes)
                return Fetched(classes=classes, layout="class folders", excluded=left_out)
            labels = locate_labels_csv(data.labels_csv, unwrap(root))
            # Paths in a CSV shipped with the images are relative to its own folder; otherwise to the source.
            images = labels.parent if labels.is_relative_to(root) else root
            arranged = arrange_by_label(labels, images, staging)
            return Fetched(
                classes=arranged.classes,
                layout=f"labels CSV {labels.name}",
                excluded=arranged.excluded,
                unlisted=arranged.unlisted,
            )
