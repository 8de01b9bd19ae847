"""Getting a dataset into ``data/raw/<class>/``: from a URL, a local archive, or a local folder.

Downloads are checked against ``data.sha256`` when it is set, archives are extracted without letting any
member land outside the target, and the result appears under its final name only when it is complete.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from transfer.errors import DataError
from transfer.io import atomic_path
from transfer.params import repo_path

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
DOWNLOAD_ATTEMPTS = 3
CHUNK_BYTES = 1 << 20


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_hidden(name: str) -> bool:
    """Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``) and macOS ``__MACOSX`` are never data."""
    return name.startswith(".") or name == "__MACOSX"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` with a progress bar, retrying on network errors.

    A download whose length differs from the server's Content-Length is an error, never a result.
    """
    from tqdm import tqdm

    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:
                expected = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=expected, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar:
                    received = 0
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if expected is not None and received != expected:
                raise DataError(f"download of {url} stopped at {received} of {expected} bytes")
            return
        except (urllib.error.URLError, OSError, DataError) as error:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise DataError(f"cannot download data.source {url}: {error}") from None
            log.warning("download attempt %d failed (%s); retrying", attempt, error)
            time.sleep(2**attempt)


def _check_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"archive {archive} is refused: member {name!r} would be written outside the target")


def extract(archive: Path, target: Path) -> None:
    """Extract a .tgz, .tar.gz, .tar or .zip archive into ``target``, refusing members that escape it."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                for name in bundle.namelist():
                    _check_member(name, archive)
                bundle.extractall(target)
            return
        with tarfile.open(archive, "r:*") as bundle:
            for member in bundle.getmembers():
                _check_member(member.name, archive)
                if member.issym() or member.islnk():
                    link = PurePosixPath(member.name).parent / member.linkname
                    if member.islnk():
                        link = PurePosixPath(member.linkname)
                    _check_member(str(link), archive)
                elif not (member.isfile() or member.isdir()):
                    raise DataError(f"archive {archive} is refused: member {member.name!r} is a device or pipe")
            # The "data" filter repeats these checks inside tarfile itself.
            bundle.extractall(target, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DataError(f"archive {archive} is broken or not a .tgz/.tar.gz/.tar/.zip archive: {error}") from None


def find_class_root(folder: Path) -> Path:
    """The folder whose subfolders are the classes: descends through single wrapper folders like ``flower_photos/``."""
    while True:
        children = [child for child in folder.iterdir() if not is_hidden(child.name)]
        subfolders = [child for child in children if child.is_dir()]
        if len(subfolders) == 1 and len(children) == 1:
            folder = subfolders[0]
            continue
        if len(subfolders) < 2:
            raise DataError(
                f"{folder} holds {len(subfolders)} class folder(s); expected one subfolder per class "
                "(at least two), each holding that class's images"
            )
        return folder


def copy_classes(root: Path, target: Path) -> list[str]:
    """Copy each non-hidden class folder of ``root`` into ``target``, leaving hidden entries behind.

    Returns:
        The class folder names copied, sorted.
    """
    ignore = shutil.ignore_patterns(".*", "__MACOSX")
    classes = sorted(child.name for child in root.iterdir() if child.is_dir() and not is_hidden(child.name))
    for name in classes:
        shutil.copytree(root / name, target / name, ignore=ignore, symlinks=False)
    return classes


def fetch(source: str, sha256: str | None, target: Path) -> list[str]:
    """Materialise ``source`` as ``target/<class>/<images>``, whole or not at all.

    Args:
        source: an http(s) URL or a local path to an archive or to a folder of class folders.
        sha256: the expected checksum of the archive, or None to skip the check.
        target: the folder to create (replaced if it exists).

    Returns:
        The class names found.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as scratch_name:
        scratch = Path(scratch_name)
        if is_url(source):
            archive = scratch / "download"
            download(source, archive)
        else:
            archive = repo_path(source)
            if not archive.exists():
                raise DataError(f"data.source = {source!r} is invalid: no such file or folder")
        if archive.is_dir():
            if sha256:
                raise DataError(f"data.sha256 is set but data.source = {source!r} is a folder; set it to null")
            root = find_class_root(archive)
        else:
            if sha256:
                actual = sha256_of(archive)
                if actual != sha256:
                    raise DataError(f"checksum mismatch for {source}: data.sha256 is {sha256}, the file has {actual}")
            if not archive.name.lower().endswith(ARCHIVE_SUFFIXES) and not is_url(source):
                raise DataError(
                    f"data.source = {source!r} is invalid: expected a URL, a folder, or an archive "
                    f"ending in {', '.join(ARCHIVE_SUFFIXES)}"
                )
            extract(archive, scratch / "extracted")
            root = find_class_root(scratch / "extracted")
        with atomic_path(target) as staging:
            staging.mkdir()
            return copy_classes(root, staging)
