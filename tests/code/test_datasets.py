"""Scanning and splitting: corrupt files are excluded with a reason; the split is stratified, seeded, leak-free."""

import shutil
from collections import Counter

import numpy as np
import pytest

from transfer.datasets import read_classes, read_split, scan_images, stratified_split, write_splits
from transfer.errors import DataError


@pytest.fixture
def raw(shapes_folder, tmp_path):
    folder = tmp_path / "raw"
    shutil.copytree(shapes_folder, folder)
    return folder


def test_bad_files_are_excluded_with_a_reason(raw):
    (raw / "circle" / "empty.jpg").write_bytes(b"")
    (raw / "circle" / "notes.jpg").write_text("not an image")
    good = (raw / "square" / "square_000.jpg").read_bytes()
    (raw / "square" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    shutil.copy(raw / "square" / "square_001.png", raw / "square" / "png_named.jpg")
    (raw / ".ipynb_checkpoints").mkdir()
    scan = scan_images(raw)
    reasons = {row["path"]: row["reason"] for row in scan.excluded}
    assert reasons["circle/empty.jpg"] == "empty file"
    assert reasons["circle/notes.jpg"].startswith("cannot be decoded")
    assert reasons["square/truncated.jpg"].startswith("cannot be decoded")
    assert "square/png_named.jpg" in {path for path, _, _ in scan.images}
    assert scan.classes == ["circle", "square", "triangle"]


def test_an_image_under_two_labels_is_dropped(raw):
    shutil.copy(raw / "circle" / "circle_000.jpg", raw / "square" / "looks_round.jpg")
    scan = scan_images(raw)
    dropped = {row["path"] for row in scan.excluded}
    assert {"circle/circle_000.jpg", "square/looks_round.jpg"} <= dropped


def test_the_split_is_stratified_deterministic_and_leak_free(raw):
    shutil.copy(raw / "circle" / "circle_000.jpg", raw / "circle" / "copy_of_000.jpg")
    scan = scan_images(raw)
    first = stratified_split(scan.images, scan.classes, 0.2, 0.2, seed=7)
    assert first == stratified_split(scan.images, scan.classes, 0.2, 0.2, seed=7)
    assert first != stratified_split(scan.images, scan.classes, 0.2, 0.2, seed=8)
    paths = {split: {path for path, _ in rows} for split, rows in first.items()}
    assert not (paths["train"] & paths["val"] or paths["train"] & paths["test"] or paths["val"] & paths["test"])
    assert sum(len(rows) for rows in first.values()) == len(scan.images)
    for split in ("val", "test"):
        counts = Counter(label for _, label in first[split])
        assert set(counts) == {"circle", "square", "triangle"} and max(counts.values()) - min(counts.values()) <= 1
    together = [split for split, found in paths.items() if {"circle/circle_000.jpg", "circle/copy_of_000.jpg"} & found]
    assert len(together) == 1, "identical images must share a split"


def test_too_few_images_for_the_split_is_a_clear_error(raw):
    for extra in sorted((raw / "triangle").iterdir())[2:]:
        extra.unlink()
    scan = scan_images(raw)
    with pytest.raises(DataError, match="class 'triangle' has 2 distinct image"):
        stratified_split(scan.images, scan.classes, 0.2, 0.2, seed=0)


def test_splits_round_trip_with_the_class_order(raw, tmp_path):
    scan = scan_images(raw)
    splits = stratified_split(scan.images, scan.classes, 0.2, 0.2, seed=0)
    write_splits(tmp_path / "splits", splits, ["triangle", "circle", "square"])
    classes = read_classes(tmp_path / "splits")
    assert classes == ["triangle", "circle", "square"], "the written class order is data, never re-sorted"
    paths, labels = read_split(tmp_path / "splits", "test", raw, classes)
    assert [classes[i] for i in labels] == [label for _, label in splits["test"]]
    assert all(path.startswith(str(raw)) for path in paths)
    assert labels.dtype == np.int32
