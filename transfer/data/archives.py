"""Unpacking an archive (tar, tgz or zip) safely: no member may land outside the target, be a link out of it,
or unpack past ``data.max_bytes``; the result appears only when it is whole.
"""

from __future__ import annotations

import posixpath
import sys
import tarfile
import zipfile
from pathlib import Path

from transfer.errors import DataError

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")


class TooLarge(DataError):
    """A download over ``data.max_bytes``: retrying would not help."""


def _outside(name: str) -> bool:
    """Whether an archive path, taken relative to the target, would leave it."""
    path = name.replace("\\", "/")
    return path.startswith("/") or posixpath.normpath(path).split("/")[0] == ".."


def _check_member(name: str, archive: Path, link: str | None = None) -> None:
    if _outside(name):
        raise DataError(f"archive {archive} is refused: member {name!r} would be written outside the target")
    if link is not None and _outside(link):
        raise DataError(f"archive {archive} is refused: member {name!r} links outside the target")


def _check_size(total: int, archive: Path, max_bytes: int) -> None:
    if total > max_bytes:
        raise DataError(
            f"archive {archive} is refused: it unpacks to {total} bytes, over data.max_bytes = {max_bytes}"
        )


def extract(archive: Path, target: Path, max_bytes: int) -> None:
    """Extract a .tgz, .tar.gz, .tar or .zip archive into ``target``.

    Every member is checked before anything is written: none may land outside ``target`` (absolute paths,
    ``..``, links pointing out), none may be a device or pipe, and together they may not unpack to more
    than ``max_bytes``. Sizes are the archive's own: zipfile and tarfile never write more than a member
    declares, so a forged header cannot unpack more than it admits.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                members = bundle.infolist()
                for member in members:
                    _check_member(member.filename, archive)
                _check_size(sum(member.file_size for member in members), archive, max_bytes)
                bundle.extractall(target)
            return
        with tarfile.open(archive, "r:*") as bundle:
            members = bundle.getmembers()
            for member in members:
                if member.issym():  # relative to the link's own folder
                    _check_member(member.name, archive, posixpath.join(posixpath.dirname(member.name), member.linkname))
                elif member.islnk():  # relative to the archive's top
                    _check_member(member.name, archive, member.linkname)
                else:
                    _check_member(member.name, archive)
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise DataError(f"archive {archive} is refused: member {member.name!r} is a device or pipe")
            _check_size(sum(member.size for member in members if member.isfile()), archive, max_bytes)
            # The "data" filter repeats these checks inside tarfile itself; Pythons before 3.10.12 and 3.11.4
            # lack it (pyproject.toml's floor), and there is no safe unpacking without it.
            if not hasattr(tarfile, "data_filter"):
                raise DataError(f"archive {archive} cannot be unpacked safely on Python {sys.version.split()[0]}: "
                                "tarfile's extraction filters need Python 3.10.12, 3.11.4 or later")
            bundle.extractall(target, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        detail = " ".join(str(error).split())  # tarfile lists each method it tried on lines of their own
        raise DataError(f"archive {archive} is broken or not a .tgz/.tar.gz/.tar/.zip archive: {detail}") from None
