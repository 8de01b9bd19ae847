"""Outputs written whole or not at all: everything goes to a temporary name first, then is renamed.

Temporaries are hidden siblings named after the writing process (``.features.tmp4242``), so a stage killed
midway (``kill -9``, out of memory) leaves nothing under an output's name; the next writer of the same
output clears what a dead process left behind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


def _sibling(path: Path, kind: str) -> Path:
    # Same folder (so the rename is atomic), same suffix (Keras insists on ".keras"), hidden name.
    return path.with_name(f".{path.stem}.{kind}{os.getpid()}{path.suffix}")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by processes that no longer run; returns what was removed."""
    import psutil

    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.(?:tmp|old)(\d+){re.escape(path.suffix)}")
    stale = []
    for sibling in path.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and int(match.group(1)) != os.getpid() and not psutil.pid_exists(int(match.group(1))):
            remove(sibling)
            stale.append(sibling)
    return stale


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write a file or a folder to; on success it replaces ``path``.

    On an exception the temporary is removed and ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    temporary = _sibling(final, "tmp")
    remove(temporary)
    try:
        yield temporary
        if final.is_dir() and not final.is_symlink():
            # A folder cannot be replaced by rename: move the old one aside first.
            old = _sibling(final, "old")
            os.replace(final, old)
            os.replace(temporary, final)
            remove(old)
        else:
            os.replace(temporary, final)
    finally:
        remove(temporary)


@contextlib.contextmanager
def scratch_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden working folder beside ``path`` for this process, removed afterwards whatever happens."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    scratch = _sibling(final, "tmp")
    remove(scratch)
    scratch.mkdir()
    try:
        yield scratch
    finally:
        remove(scratch)


def remove(path: Path) -> None:
    """Remove a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula (``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return: a file or class name chosen by whoever made the photos) gets a leading apostrophe."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def from_spreadsheet_safe(text: str) -> str:
    """The name :func:`spreadsheet_safe` was given back: its apostrophe dropped where it added one."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


def shortened(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut: a user's value quoted in a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def displayed_path(path: str | os.PathLike) -> str:
    """A path as text that can always be written: bytes of a name that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file with a header row, atomically."""
    with atomic_path(path) as temporary:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def read_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV file with a header row: the one reader of every CSV, the pipeline's own and the
    user's (curation files, labels CSVs). A byte-order mark (a spreadsheet's "CSV UTF-8") is not part of the
    first column's name, and spaces around a column's name are not part of it.

    Raises:
        DataError: the file is not UTF-8 text or not CSV (named, with the reason).
    """
    from transfer.errors import DataError

    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            return header, list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} cannot be read as a UTF-8 CSV file: {error}") from None


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file with a header row, as dicts (see :func:`read_table`)."""
    return read_table(path)[1]
