"""The split: drawing train, val and test per class (seeded, stratified), applying the reviewed curation
files, writing ``data/splits/`` and reading it back, and the data report split leaves.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from transfer.data.images import ImageScan
from transfer.errors import DataError
from transfer.io import from_spreadsheet_safe, read_csv, read_json, read_table, spreadsheet_safe, write_csv, write_json

SPLITS = ("train", "val", "test")
CLASSES_FILE = "classes.json"


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
