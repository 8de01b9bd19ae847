"""Array data sets as a source: a .npz or a CIFAR python archive, by path or URL; the test split they ship."""

import csv
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import default_params_tree, make_pipeline_repo, run
from transfer.data import arrays
from transfer.data.sources import fetch
from transfer.errors import DataError, ParamError
from transfer.io import read_json
from transfer.params import Params
from transfer.schema import DataParams, read_data


def _data(source, sha256=None, labels_csv=None) -> DataParams:
    return DataParams(source=str(source), sha256=sha256, labels_csv=labels_csv, max_bytes=10**9)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def _files(target: Path) -> list[str]:
    return sorted(path.relative_to(target).as_posix() for path in target.rglob("*.png"))


def test_a_npz_becomes_one_lossless_png_per_image_named_by_its_class(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), classes=np.array(["cat", "dog", "eel"]))
    fetched = fetch(_data(tmp_path / "set.npz"), tmp_path / "raw")
    assert (fetched.classes, fetched.layout, fetched.shipped_test) == (["cat", "dog", "eel"], "arrays (.npz)", 0)
    assert _files(tmp_path / "raw") == ["cat/train-00000.png", "cat/train-00003.png", "dog/train-00001.png",
                                        "dog/train-00004.png", "eel/train-00002.png", "eel/train-00005.png"]
    assert np.array_equal(_pixels(tmp_path / "raw" / "dog" / "train-00004.png"), x[4])


def test_grayscale_becomes_rgb_and_names_default_to_the_label_numbers(tmp_path):
    x = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    np.savez(tmp_path / "gray.npz", x_train=x, y_train=np.array([[0], [1], [0], [1]]),
             x_test=x[:2, ..., None], y_test=np.array([1, 0]))
    fetched = fetch(_data(tmp_path / "gray.npz"), tmp_path / "raw")
    assert (fetched.classes, fetched.shipped_test) == (["0", "1"], 2)
    assert _files(tmp_path / "raw") == ["0/test-00001.png", "0/train-00000.png", "0/train-00002.png",
                                        "1/test-00000.png", "1/train-00001.png", "1/train-00003.png"]
    assert np.array_equal(_pixels(tmp_path / "raw" / "1" / "train-00003.png"), np.repeat(x[3][..., None], 3, -1))


def test_labels_given_as_names_and_floats_in_zero_to_one(tmp_path):
    x = np.full((2, 2, 2, 3), 0.5, dtype=np.float32)
    np.savez(tmp_path / "named.npz", x=x, y=np.array(["rose", "tulip"]))
    assert fetch(_data(tmp_path / "named.npz"), tmp_path / "raw").classes == ["rose", "tulip"]
    assert _pixels(tmp_path / "raw" / "tulip" / "train-00001.png").max() == 128


@pytest.mark.parametrize("arrays_in, message", [
    ({"x": np.zeros((2, 4, 4), np.uint8)}, "expected x and y"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1, 1])}, "2 images and 3 labels"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 2]), "classes": np.array(["a", "b"])},
     "only 2 class names"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.0, 1.0])}, "integer class indices or class names"),
    ({"x": np.zeros((2, 4, 4, 2), np.uint8), "y": np.array([0, 1])}, "1, 3 or 4 channels"),
    ({"x": np.full((2, 4, 4), 300), "y": np.array([0, 1])}, "outside [0, 255]"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1]), "classes": np.array(["a", "a/b"])},
     "cannot name a class folder"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1]), "classes": np.array([{}, {}], dtype=object)},
     "never loaded"),
])
def test_bad_arrays_are_named_and_nothing_is_written(tmp_path, arrays_in, message):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "kept.txt").write_text("the previous data")
    np.savez(tmp_path / "bad.npz", **arrays_in)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fetch(_data(tmp_path / "bad.npz"), tmp_path / "raw")
    assert [path.name for path in (tmp_path / "raw").iterdir()] == ["kept.txt"]


def test_a_broken_npz_and_a_labels_csv_that_does_not_apply(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a readable .npz"):
        fetch(_data(tmp_path / "broken.npz"), tmp_path / "raw")
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 2, 2), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match="data.labels_csv = 'labels.csv' does not apply"):
        fetch(_data(tmp_path / "ok.npz", labels_csv="labels.csv"), tmp_path / "raw")


def test_a_npz_that_unpacks_past_max_bytes_is_refused_before_it_is_loaded(tmp_path):
    # 1.2 MB of zeros compress to a few kB: the file's size says nothing about what loading it allocates.
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((300, 64, 64), np.uint8), y=np.arange(300) % 2)
    assert (tmp_path / "zeros.npz").stat().st_size < 20_000
    small = DataParams(source=str(tmp_path / "zeros.npz"), sha256=None, labels_csv=None, max_bytes=1_000_000)
    with pytest.raises(DataError, match=r"zeros.npz unpacks to 12\d{5} bytes of arrays, over data.max_bytes = "
                                        r"1000000; raise data.max_bytes to load it"):
        fetch(small, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert fetch(_data(tmp_path / "zeros.npz"), tmp_path / "raw").classes == ["0", "1"]


def _cifar_batch(x_hwc: np.ndarray, labels, key=b"labels") -> bytes:
    data = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1)
    return pickle.dumps({b"batch_label": b"batch", key: list(labels), b"data": data, b"filenames": []}, protocol=2)


def cifar10_archive(path: Path, rng: np.random.Generator, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 python archive in the real layout (two training batches and a test batch); returns the first
    batch's images and labels as HWC arrays."""
    names = ["airplane", "automobile", "bird"]
    members = {"batches.meta": pickle.dumps({b"label_names": [name.encode() for name in names]}, protocol=2)}
    first = None
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 3, per_batch)
        members[name] = _cifar_batch(x, y)
        first = first or (x, y)
    with tarfile.open(path, "w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return first


def test_a_cifar10_archive_keeps_its_pixels_names_and_test_batch(tmp_path):
    x, y = cifar10_archive(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(1))
    fetched = fetch(_data(tmp_path / "cifar-10-python.tar.gz"), tmp_path / "raw")
    assert fetched.layout == "cifar10 python archive"
    assert fetched.shipped_test == 4
    assert len(_files(tmp_path / "raw")) == 12
    label = ["airplane", "automobile", "bird"][y[2]]
    assert np.array_equal(_pixels(tmp_path / "raw" / label / "train-00002.png"), x[2])  # CHW rows -> HWC


def test_a_cifar100_archive_takes_its_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    members = {
        "meta": pickle.dumps({b"fine_label_names": [b"apple", b"bear"], b"coarse_label_names": [b"x"]}),
        "train": _cifar_batch(x, [1, 0, 1], key=b"fine_labels"),
        "test": _cifar_batch(x[:1], [0], key=b"fine_labels"),
    }
    folder = tmp_path / "extracted" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    loaded = arrays.arrays_from_cifar(folder)
    assert loaded.classes == ["apple", "bear"]
    assert loaded.y.tolist() == [1, 0, 1] and loaded.y_test.tolist() == [0]
    assert np.array_equal(loaded.x, x)


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/transfer-test-pickle-ran"),))


def test_a_cifar_batch_that_names_other_code_is_refused_unrun(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Boom(), b"labels": [0]}))
    marker = Path("/tmp/transfer-test-pickle-ran")
    marker.unlink(missing_ok=True)
    with pytest.raises(DataError, match="is not allowed in a CIFAR batch"):
        arrays.arrays_from_cifar(folder)
    assert not marker.exists()


@pytest.mark.parametrize(("source", "expected"), [
    ("keras:cifar10", "for this data set: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ("keras:cifar100", "for this data set: https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ("keras:mnist", "for this data set: https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"),
    ("keras:fashion_mnist", "for the arrays Keras names: cifar10: https://www.cs.toronto.edu/~kriz/cifar-10"),
])
def test_a_keras_dataset_name_is_refused_with_the_url_to_give_instead(source, expected):
    """The pipeline names a data set by URL or path (download's DVC dependency is data.source itself)."""
    tree = default_params_tree()
    tree["data"]["source"] = source
    with pytest.raises(ParamError, match=f"data.source = '{source}' is invalid: expected a URL or a path") as raised:
        read_data(Params(tree))
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def _split_rows(repo: Path, split: str) -> list[dict[str, str]]:
    with (repo / "data" / "splits" / f"{split}.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("keep", [True, False])
def test_split_keeps_the_test_split_a_data_set_ships(tmp_path, keep):
    rng = np.random.default_rng(3)
    source = tmp_path / "set.npz"
    np.savez(source, x_train=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), y_train=np.arange(40) % 2,
             x_test=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), y_test=np.arange(10) % 2,
             classes=np.array(["even", "odd"]))
    repo = make_pipeline_repo(tmp_path / "repo", {"data.source": str(source), "split.shipped_test": keep})
    run(["python", "stages/download.py"], repo)
    run(["python", "stages/split.py"], repo)
    report = read_json(repo / "reports" / "data.json")
    test = [row["path"] for row in _split_rows(repo, "test")]
    drawn = [row["path"] for split in ("train", "val") for row in _split_rows(repo, split)]
    if keep:
        assert report["test_split"] == "shipped with the data set (10 images); split.test is not used"
        assert len(test) == 10 and all(Path(path).name.startswith("test-") for path in test)
        assert not any(Path(path).name.startswith("test-") for path in drawn)
        assert report["split_sizes"] == {"train": 34, "val": 6, "test": 10}
    else:
        assert report["test_split"].startswith("drawn: split.test = 0.15 of each class, from all images")
        assert report["split_sizes"]["test"] == 8
        assert any(Path(path).name.startswith("test-") for path in drawn)


def test_a_npz_whose_header_declares_a_huge_array_is_refused_before_numpy_allocates_it(tmp_path):
    """A few hundred bytes whose .npy header declares 500000 x 500000 float64 (2 TB): np.load would try to
    allocate it; the declared size is checked against what the member holds first."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (500000, 500000)})
    with zipfile.ZipFile(tmp_path / "crafted.npz", "w") as bundle:
        bundle.writestr("x.npy", header.getvalue())
        bundle.writestr("y.npy", header.getvalue())
    assert (tmp_path / "crafted.npz").stat().st_size < 1000
    with pytest.raises(DataError, match=r"array 'x' declares shape \(500000, 500000\) of float64 \(2000000000000 "
                                        r"bytes\) but holds 0: a broken or crafted file"):
        fetch(_data(tmp_path / "crafted.npz"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_cifar_batch_of_repeated_references_to_one_row_is_refused(tmp_path):
    """A pickle can list one row 400,000 times in under 2 MB (here 100,000); converted, it is 1.2 GB and 400,000
    PNGs. A CIFAR batch holds its pixels as an array, whose bytes are in the file."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    row = bytes(3072)
    batch = pickle.dumps({b"data": [row] * 100_000, b"labels": [0] * 100_000}, protocol=2)
    assert len(batch) < 500_000
    (folder / "data_batch_1").write_bytes(batch)
    with pytest.raises(DataError, match="holds its data as a list, not an array"):
        arrays.arrays_from_cifar(folder)


def test_a_class_name_too_long_for_a_folder_is_refused_in_one_line(tmp_path):
    np.savez(tmp_path / "long.npz", x=np.zeros((4, 9, 9, 3), np.uint8), y=np.array([0, 1, 0, 1]),
             classes=np.array(["a" * 300, "b"]))
    with pytest.raises(DataError, match="at most 255 bytes as a folder name; this one takes 300"):
        fetch(_data(tmp_path / "long.npz"), tmp_path / "raw")
