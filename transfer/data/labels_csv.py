"""Kaggle-style datasets: a flat folder of images plus a CSV naming each image's label.

The dog-breed set, for one, ships ``labels.csv`` with columns ``id,breed`` and ``train/<id>.jpg``: the file
is named without its extension and without its folder. :func:`arrange_by_label` finds each listed image
and copies it to ``<target>/<label>/``, so every later stage sees the usual one-folder-per-class layout.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from transfer.errors import DataError, ParamError
from transfer.io import read_table, shortened
from transfer.layout import class_name_problem, visible_files
from transfer.params import LABELS_FOLDER, input_file

# Header names recognised (case-insensitive), in order of preference.
FILE_COLUMNS = ("file", "filename", "file_name", "path", "filepath", "image", "image_id", "id", "fname")
LABEL_COLUMNS = ("label", "class", "class_name", "breed", "category", "species", "target")
# Tried, in this order, when the CSV names a file without its extension.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".JPG", ".JPEG", ".PNG")


@dataclass
class Arranged:
    """What :func:`arrange_by_label` did.

    Attributes:
        classes: the labels, sorted; one folder each under the target.
        excluded: {"path", "reason"} for every CSV row that gave no image.
        unlisted: how many files under the image folder the CSV does not label (left out).
    """

    classes: list[str]
    excluded: list[dict[str, str]] = field(default_factory=list)
    unlisted: int = 0


def locate_labels_csv(value: str, source_root: Path) -> Path:
    """The labels file: ``value`` inside the source first (hashed with it), else a path in
    :data:`~transfer.params.LABELS_FOLDER` (download's DVC dependency); DVC sees either change in place.

    Raises:
        DataError: in neither place, or outside the source and outside the labels folder.
    """
    inside = source_root / value
    if inside.is_file() and inside.resolve().is_relative_to(source_root.resolve()):
        return inside
    problem = f"data.labels_csv = {value!r} is invalid: no such file inside data.source ({inside})"
    try:
        outside = input_file("data.labels_csv", value, LABELS_FOLDER)
    except ParamError:
        raise DataError(
            f"{problem}; a labels CSV kept outside the source must be in {LABELS_FOLDER.as_posix()}/ (download's "
            "DVC dependency, so that a row changed in place re-runs the pipeline)"
        ) from None
    if outside.is_file():
        return outside
    raise DataError(f"{problem} or at {outside.resolve()}")


def _pick(header: list[str], wanted: tuple[str, ...]) -> str | None:
    by_lower = {name.strip().lower(): name for name in header}
    return next((by_lower[name] for name in wanted if name in by_lower), None)


def read_labels(path: Path) -> list[tuple[str, str]]:
    """The (file, label) rows of a labels CSV, its columns found by their header names.

    Raises:
        DataError: the file has no recognisable file or label column, or no rows.
    """
    header, table = read_table(path)
    file_column, label_column = _pick(header, FILE_COLUMNS), _pick(header, LABEL_COLUMNS)
    if file_column is None or label_column is None:
        raise DataError(
            f"labels CSV {path} has columns {header}; expected a file column (one of "
            f"{', '.join(FILE_COLUMNS)}) and a label column (one of {', '.join(LABEL_COLUMNS)})"
        )
    rows = [((row[file_column] or "").strip(), (row[label_column] or "").strip()) for row in table]
    if not rows:
        raise DataError(f"labels CSV {path} has a header but no rows")
    return rows


def _check_label(label: str, csv_path: Path) -> None:
    problem = class_name_problem(label)
    if problem:
        raise DataError(f"labels CSV {csv_path} has label {shortened(label)!r}, which cannot name a class folder: "
                        f"{problem}")


class _ImageIndex:
    """Every visible file under a folder, found by its path under the folder (with or without its extension); an
    entry that names no folder (Kaggle's bare ids) also by its file name, or name without extension, anywhere."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = [path.relative_to(root).as_posix() for path in visible_files(root)]
        self._known = set(self.paths)
        self._by_name: dict[str, list[str]] = defaultdict(list)
        self._by_stem: dict[str, list[str]] = defaultdict(list)
        for relative in self.paths:
            pure = PurePosixPath(relative)
            self._by_name[pure.name].append(relative)
            self._by_stem[pure.stem].append(relative)

    def find(self, listed: str) -> list[str]:
        """The files a CSV entry may mean: its exact path, then with an image extension; an entry with no folder
        in it, then by its name in any folder. An entry that names a folder binds by its path alone, so a wrong
        folder (or ``../../etc/passwd``) never picks up another file of the same name."""
        listed = listed.replace("\\", "/").removeprefix("./")
        for candidate in (listed, *(listed + suffix for suffix in IMAGE_SUFFIXES)):
            if candidate in self._known:
                return [candidate]
        if "/" in listed:
            return []
        return self._by_name.get(listed) or self._by_stem.get(listed) or []


def arrange_by_label(csv_path: Path, images_root: Path, target: Path) -> Arranged:
    """Copy each image the CSV lists to ``target/<label>/<its path under images_root>``.

    A row whose image is missing, whose label is empty, or whose image another row labels differently is
    left out and reported; a file name that matches two images is an error, since either choice could be
    wrong.

    Args:
        csv_path: the labels file.
        images_root: the folder holding the images, at any depth.
        target: the folder to fill with one subfolder per label (created).
    """
    index = _ImageIndex(images_root)
    labels_of: dict[str, set[str]] = defaultdict(set)
    excluded: list[dict[str, str]] = []
    for listed, label in read_labels(csv_path):
        if not listed:
            continue
        if not label:
            excluded.append({"path": listed, "reason": f"empty label in {csv_path.name}"})
            continue
        _check_label(label, csv_path)
        found = index.find(listed)
        if not found:
            where = " at that path" if "/" in listed.replace("\\", "/") else ""
            excluded.append({"path": listed, "reason": f"listed in {csv_path.name} but no such image{where}"})
        elif len(found) > 1:
            raise DataError(
                f"labels CSV {csv_path} names {listed!r}, which matches {len(found)} files: "
                f"{', '.join(found[:5])}; name the file by its path under the source"
            )
        else:
            labels_of[found[0]].add(label)
    listed_files = set(labels_of)
    for relative in sorted(file for file, labels in labels_of.items() if len(labels) > 1):
        excluded.append({"path": relative, "reason": f"labelled {', '.join(sorted(labels_of.pop(relative)))}"})
    if not labels_of:
        raise DataError(f"labels CSV {csv_path} names no image found under {images_root}")
    for relative, (label,) in labels_of.items():
        destination = target / label / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images_root / relative, destination)
    csv_relative = csv_path.relative_to(images_root).as_posix() if csv_path.is_relative_to(images_root) else None
    unlisted = len([path for path in index.paths if path not in listed_files and path != csv_relative])
    classes = sorted({label for (label,) in labels_of.values()})
    return Arranged(classes=classes, excluded=excluded, unlisted=unlisted)
