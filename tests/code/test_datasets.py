"""Scanning and splitting: corrupt files are excluded with a reason; the split is stratified, seeded, leak-free."""

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.helpers import bomb_png
from transfer.data.images import decode_problem, exif_orientation, scan_images
from transfer.data.pipeline import decode_resized, image_dataset, load_image, orient
from transfer.data.splits import data_report, read_classes, read_split, stratified_split, write_splits
from transfer.errors import DataError

# A smooth RGB gradient: JPEG keeps it within a few levels, so decoded pixels can be compared.
_Y, _X = np.mgrid[0:40, 0:50]
GRADIENT = np.stack([_X * 5, _Y * 6, (_X + _Y) * 2], axis=-1).astype(np.uint8)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png16(pixels: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_png(tf.constant(pixels.astype(np.uint16) * 257)).numpy()


# name: (bytes, the RGB pixels the pipeline must see, tolerance in mean absolute levels)
COLOUR_MODELS = {
    "cmyk.jpg": (_encoded(Image.fromarray(GRADIENT).convert("CMYK"), "JPEG", quality=95), GRADIENT, 2.0),
    "gray.jpg": (_encoded(Image.fromarray(GRADIENT[..., 0]), "JPEG", quality=95),
                 np.repeat(GRADIENT[..., :1], 3, axis=-1), 2.0),
    "rgba.png": (_encoded(Image.fromarray(np.dstack([GRADIENT, np.full(GRADIENT.shape[:2], 90, np.uint8)])), "PNG"),
                 GRADIENT, 0.0),
    "deep16.png": (_png16(GRADIENT), GRADIENT, 0.0),
    "gray16.png": (_encoded(Image.fromarray(GRADIENT[..., 1].astype(np.uint16) * 257), "PNG"),
                   np.repeat(GRADIENT[..., 1:2], 3, axis=-1), 0.0),
    "palette_gif_named.jpg": (_encoded(Image.fromarray(GRADIENT).convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
                              GRADIENT, 6.0),
    "bitmap.bmp": (_encoded(Image.fromarray(GRADIENT), "BMP"), GRADIENT, 0.0),
}


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


@pytest.mark.parametrize("name", sorted(COLOUR_MODELS))
def test_every_colour_model_is_kept_and_read_as_rgb(raw, name):
    data, expected, tolerance = COLOUR_MODELS[name]
    (raw / "circle" / name).write_bytes(data)
    scan = scan_images(raw)
    assert f"circle/{name}" in {path for path, _, _ in scan.images}, scan.excluded
    pixels = load_image(str(raw / "circle" / name), expected.shape[:2]).numpy()
    assert pixels.shape == (*expected.shape[:2], 3)
    assert np.abs(pixels - expected).mean() <= tolerance


def test_unsupported_and_unreadable_files_say_why(raw, monkeypatch):
    (raw / "circle" / "scan.jpg").write_bytes(_encoded(Image.fromarray(GRADIENT), "TIFF"))
    (raw / "circle" / "locked.jpg").write_bytes(b"\xff\xd8")
    (raw / "circle" / ".ipynb_checkpoints").mkdir()
    (raw / "circle" / ".ipynb_checkpoints" / "circle_000-checkpoint.jpg").write_bytes(b"")
    (raw / ".DS_Store").write_bytes(b"junk")
    original = Path.read_bytes

    def read_bytes(path):
        if path.name == "locked.jpg":
            raise PermissionError(13, "Permission denied")
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    reasons = {row["path"]: row["reason"] for row in scan_images(raw).excluded}
    assert reasons == {
        "circle/scan.jpg": "TIFF is not supported; convert it to JPEG, PNG, GIF, BMP or WebP",
        "circle/locked.jpg": "cannot be read: Permission denied",
    }, "hidden entries are neither images nor exclusions"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds almost no pixels (cheap to make, huge to decode)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_an_image_too_large_to_decode_safely_is_refused_from_its_header(raw):
    (raw / "circle" / "panorama.png").write_bytes(_png_header(20000, 20000))
    reasons = {row["path"]: row["reason"] for row in scan_images(raw).excluded}
    assert reasons == {"circle/panorama.png": "20000x20000 pixels is over the 100-megapixel bound; scale it down"}
    assert decode_problem(_encoded(Image.fromarray(GRADIENT), "PNG")) is None


def test_an_image_too_small_to_show_a_class_is_refused(raw):
    Image.new("RGB", (1, 1), (200, 30, 30)).save(raw / "circle" / "pixel.png")
    Image.new("RGB", (64, 7), (200, 30, 30)).save(raw / "circle" / "strip.jpg")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(raw / "circle" / "icon.png")
    reasons = {row["path"]: row["reason"] for row in scan_images(raw).excluded}
    assert reasons == {
        "circle/pixel.png": "1x1 pixels is below the 8x8 the pipeline accepts: too small to show a class",
        "circle/strip.jpg": "64x7 pixels is below the 8x8 the pipeline accepts: too small to show a class",
    }


def test_the_data_report_lists_duplicates_and_download_exclusions(raw):
    shutil.copy(raw / "circle" / "circle_000.jpg", raw / "circle" / "again.jpg")
    (raw / "circle" / "empty.jpg").write_bytes(b"")
    scan = scan_images(raw)
    splits = stratified_split(scan.images, scan.classes, 0.2, 0.2, seed=0)
    fetched = {"layout": "labels CSV labels.csv", "unlisted": 3,
               "excluded": [{"path": "gone", "reason": "listed in labels.csv but no such image"}]}
    report = data_report(scan, splits, fetched)
    assert report["duplicates"] == [["circle/again.jpg", "circle/circle_000.jpg"]]
    assert report["duplicate_images"] == 1
    assert report["excluded"] == [
        {"path": "gone", "reason": "listed in labels.csv but no such image", "stage": "download"},
        {"path": "circle/empty.jpg", "reason": "empty file", "stage": "split"},
    ]
    assert report["counts"]["train"]["circle"] + report["counts"]["val"]["circle"] + (
        report["counts"]["test"]["circle"]) == 21
    assert report["layout"] == "labels CSV labels.csv" and report["unlisted_by_labels_csv"] == 3


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


def test_split_csvs_hold_formula_like_names_as_text_and_read_them_back(tmp_path):
    """A class named -2+3 (its files' paths start with it) opens in a spreadsheet as text, as the reports do."""
    splits = {"train": [("-2+3/=cmd|' /C calc'!A0.jpg", "-2+3"), ("b/x.jpg", "b")], "val": [], "test": []}
    write_splits(tmp_path / "splits", splits, ["-2+3", "b"])
    text = (tmp_path / "splits" / "train.csv").read_text()
    assert "\n'-2+3/=cmd" in text and ",'-2+3\n" in text
    paths, labels = read_split(tmp_path / "splits", "train", tmp_path / "raw", ["-2+3", "b"])
    assert paths[0] == str(tmp_path / "raw" / "-2+3/=cmd|' /C calc'!A0.jpg") and labels.tolist() == [0, 1]


def test_the_bomb_png_pillow_cannot_parse_is_refused_by_split_from_its_header(raw):
    (raw / "circle" / "bomb.png").write_bytes(bomb_png())
    reasons = {row["path"]: row["reason"] for row in scan_images(raw).excluded}
    assert reasons == {"circle/bomb.png": "20000x20000 pixels is over the 100-megapixel bound; scale it down"}


def _sideways(path: Path, orientation: int, fmt: str) -> np.ndarray:
    """Write a 6x4 image of distinct pixels, stored as is and tagged with EXIF ``orientation``; return what a
    photo viewer shows (Pillow's exif_transpose), as decoded by Pillow."""
    pixels = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3) * 3
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_photos_stand_upright_as_their_exif_orientation_says(tmp_path, orientation):
    import tensorflow as tf

    path = tmp_path / f"photo{orientation}.png"
    upright = _sideways(path, orientation, "PNG")
    assert exif_orientation(path) == exif_orientation(path.read_bytes()) == orientation
    stored = tf.io.decode_image(path.read_bytes(), channels=3)
    np.testing.assert_array_equal(orient(stored, orientation).numpy(), upright)
    # Through the input pipeline every stage uses, which reads the tag itself, at the upright size.
    (batch,) = list(image_dataset([str(path)], upright.shape[:2], 1))
    np.testing.assert_allclose(batch[0].numpy(), upright, atol=1e-4)
    # And through the bytes path of the served photo model.
    served = decode_resized(path.read_bytes(), upright.shape[:2], exif_orientation(path.read_bytes()))
    np.testing.assert_allclose(served.numpy(), upright, atol=1e-4)


def test_a_phone_jpeg_and_files_without_exif_read_as_expected(tmp_path):
    portrait = tmp_path / "portrait.jpg"
    upright = _sideways(portrait, 6, "JPEG")
    assert upright.shape[:2] == (4, 6), "orientation 6: stored landscape, shown portrait"
    assert load_image(str(portrait), (4, 6)).shape == (4, 6, 3)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (9, 9)).save(plain)
    # A set mixing upright and sideways photos: each turned by its own tag.
    mixed = tmp_path / "mixed.png"
    sideways = _sideways(mixed, 8, "PNG")
    level = tmp_path / "level.png"
    Image.fromarray(sideways).save(level)  # the same pixels, stored upright, no tag
    first, second = list(image_dataset([str(level), str(mixed)], sideways.shape[:2], 2))[0].numpy()
    np.testing.assert_allclose(first, second, atol=1e-4)
    assert exif_orientation(plain) == 1 and exif_orientation(b"not an image") == 1
    assert exif_orientation(tmp_path / "missing.jpg") == 1


def test_reading_orientations_from_many_threads_leaves_the_warning_filters_as_they_were(raw):
    import warnings

    from transfer.data.images import exif_orientations

    paths = [str(path) for path in sorted(raw.rglob("*.*"))] * 4
    exif_orientations(paths[:1])  # Pillow's one filter, set once at first use
    before = list(warnings.filters)
    assert exif_orientations(paths, workers=8) == [1] * len(paths)
    assert warnings.filters == before
