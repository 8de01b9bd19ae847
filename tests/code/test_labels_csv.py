"""A flat folder of images labelled by a CSV (Kaggle style) becomes one folder per class."""

import shutil
import zipfile
from pathlib import Path

import pytest

from transfer.data.sources import fetch
from transfer.errors import DataError
from transfer.schema import DataParams


def _data(source, labels_csv, max_bytes=10**9) -> DataParams:
    return DataParams(source=str(source), sha256=None, labels_csv=labels_csv, max_bytes=max_bytes)


@pytest.fixture
def kaggle(shapes_folder, tmp_path) -> Path:
    """The dog-breed layout: labels.csv (id,breed; ids without extension), train/<id>.<ext>, test/<id>.<ext>."""
    root = tmp_path / "dog-breed-identification"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = ["id,breed"]
    for kind in ("circle", "square", "triangle"):
        for i, image in enumerate(sorted((shapes_folder / kind).iterdir())):
            image_id = f"{kind[0]}{i:04x}"
            folder = "test" if i >= 16 else "train"
            shutil.copy(image, root / folder / f"{image_id}{image.suffix}")
            if folder == "train":
                rows.append(f"{image_id},{kind}")
    rows += ["gone0001,circle", "c0010,", "c0002,square"]  # missing image, empty label, a second label
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "sample_submission.csv").write_text("id,circle,square,triangle\n")
    return root


def test_a_kaggle_folder_is_arranged_by_label(kaggle, tmp_path):
    fetched = fetch(_data(kaggle, "labels.csv"), tmp_path / "raw")
    assert fetched.classes == ["circle", "square", "triangle"]
    assert fetched.layout == "labels CSV labels.csv"
    counts = {name: len(list((tmp_path / "raw" / name).rglob("*.*"))) for name in fetched.classes}
    assert counts == {"circle": 15, "square": 16, "triangle": 16}, "c0002 is left out"
    assert (tmp_path / "raw" / "square" / "train" / "s0000.jpg").read_bytes() == (
        kaggle / "train" / "s0000.jpg"
    ).read_bytes()
    reasons = {row["path"]: row["reason"] for row in fetched.excluded}
    assert reasons == {
        "gone0001": "listed in labels.csv but no such image",
        "c0010": "empty label in labels.csv",
        "train/c0002.jpg": "labelled circle, square",
    }
    assert fetched.unlisted == 12 + 1, "the test/ images and sample_submission.csv are not labelled"


def test_a_kaggle_zip_with_a_wrapper_folder(kaggle, tmp_path):
    archive = Path(shutil.make_archive(str(tmp_path / "dogs"), "zip", kaggle.parent, kaggle.name))
    with zipfile.ZipFile(archive) as bundle:
        assert "dog-breed-identification/labels.csv" in bundle.namelist()
    assert fetch(_data(archive, "labels.csv"), tmp_path / "raw").classes == ["circle", "square", "triangle"]


def test_a_csv_outside_the_source_with_paths_and_extensions(shapes_folder, tmp_path, monkeypatch):
    """Outside the source, a labels CSV is read from inputs/labels/ (download's DVC dependency) and nowhere else."""
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "images"
    shutil.copytree(shapes_folder, images / "batch1")
    lines = ["Filename,Label"] + [
        f"batch1/{kind}/{image.name},{kind.upper()}" for kind in ("circle", "square") for image in
        sorted((shapes_folder / kind).iterdir())
    ]
    (tmp_path / "inputs/labels").mkdir(parents=True)
    for place in ("inputs/labels/my labels.csv", "my labels.csv"):
        (tmp_path / place).write_text("\n".join(lines) + "\n")
    for refused in ("my labels.csv", str(tmp_path / "my labels.csv"), "../my labels.csv"):
        with pytest.raises(DataError, match="a labels CSV kept outside the source must be in inputs/labels/"):
            fetch(_data(images, refused), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    fetched = fetch(_data(images, "inputs/labels/my labels.csv"), tmp_path / "raw")
    assert fetched.classes == ["CIRCLE", "SQUARE"]
    assert len(list((tmp_path / "raw" / "CIRCLE" / "batch1" / "circle").iterdir())) == 20
    assert fetched.unlisted == 20, "the triangles are not labelled"


@pytest.mark.parametrize(
    ("csv_text", "match"),
    [
        ("name,kind\nc0000,circle\n", r"has columns \['name', 'kind'\]; expected a file column"),
        ("id,breed\n", "has a header but no rows"),
        ("id,breed\nc0000,../escape\n", "has label '../escape', which cannot name a class folder"),
        ("id,breed\nc0000,.hidden\n", "has label '.hidden'"),
        ("id,breed\nnothing,circle\n", "names no image found"),
    ],
)
def test_bad_labels_csv_is_a_clear_error(kaggle, tmp_path, csv_text, match):
    (kaggle / "labels.csv").write_text(csv_text)
    with pytest.raises(DataError, match=match):
        fetch(_data(kaggle, "labels.csv"), tmp_path / "data" / "raw")
    assert list((tmp_path / "data").iterdir()) == [], "nothing is left behind"


def test_a_name_matching_two_images_is_an_error(kaggle, tmp_path):
    shutil.copy(kaggle / "train" / "c0000.jpg", kaggle / "test" / "c0000.jpg")
    with pytest.raises(DataError, match=r"names 'c0000', which matches 2 files: test/c0000.jpg, train/c0000.jpg"):
        fetch(_data(kaggle, "labels.csv"), tmp_path / "raw")


def test_a_missing_labels_csv_names_both_places(kaggle, tmp_path):
    with pytest.raises(DataError, match=r"data.labels_csv = 'labels2.csv' is invalid: no such file inside"):
        fetch(_data(kaggle, "labels2.csv"), tmp_path / "raw")


def test_an_id_with_a_folder_binds_by_its_path_alone(kaggle, tmp_path):
    """``../../etc/passwd`` once bound to an unrelated images/passwd; an id in a wrong folder picked up another
    file of the same name. An id that names a folder now binds by its path only; a bare id still finds
    train/<id>.jpg, as Kaggle's CSVs need."""
    (kaggle / "images").mkdir()
    shutil.copy(kaggle / "train" / "s0000.jpg", kaggle / "images" / "passwd")
    with (kaggle / "labels.csv").open("a") as handle:
        handle.write("../../etc/passwd,circle\ntest/s0001,circle\ntrain/t0001,triangle\n")
    fetched = fetch(_data(kaggle, "labels.csv"), tmp_path / "raw")
    reasons = {row["path"]: row["reason"] for row in fetched.excluded}
    assert reasons["../../etc/passwd"] == "listed in labels.csv but no such image at that path"
    assert reasons["test/s0001"] == "listed in labels.csv but no such image at that path", "s0001 is in train/"
    assert not (tmp_path / "raw" / "circle" / "images").exists()
    assert [path.stem for path in (tmp_path / "raw" / "triangle" / "train").iterdir() if path.stem == "t0001"], \
        "a right path binds"


def test_a_label_too_long_for_a_folder_name_is_one_line(kaggle, tmp_path):
    with (kaggle / "labels.csv").open("a") as handle:
        handle.write(f"c0001,{'x' * 256}\n")
    with pytest.raises(DataError, match="cannot name a class folder: a class name may take at most 255 bytes"):
        fetch(_data(kaggle, "labels.csv"), tmp_path / "raw")
