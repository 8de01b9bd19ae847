"""python -m transfer predict: one CSV row per file, the model's own numbers, bad files reported not fatal."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, bomb_png, native_noise, tiny_classifier
from transfer.data.pipeline import load_image
from transfer.errors import DataError
from transfer.model.classifier import save_model
from transfer.serve.predict import expand_inputs, predict_to_csv

CLASSES = ["triangle", "circle", "square"]  # deliberately not sorted: the stored order rules


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "models" / "model.keras"
    save_model(tiny_classifier(), path, CLASSES)
    return path


@pytest.fixture
def photos(shapes_folder, tmp_path):
    folder = tmp_path / "new"
    shutil.copytree(shapes_folder / "circle", folder / "batch")
    shutil.copy(shapes_folder / "square" / "square_001.png", folder / "png_named.jpg")
    (folder / "broken.jpg").write_bytes((shapes_folder / "square" / "square_000.jpg").read_bytes()[:200])
    (folder / "readme.jpg").write_text("not a photo")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"")
    return folder


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predictions_match_the_model_and_bad_files_get_an_error(model_path, photos, tmp_path):
    summary = predict_to_csv(model_path, [str(photos)], tmp_path / "out.csv", batch_size=8, top_k=2)
    assert summary == {"files": 23, "predicted": 21, "errors": 2, "out": str(tmp_path / "out.csv")}
    rows = _rows(tmp_path / "out.csv")
    assert list(rows[0]) == ["file", "predicted", "confidence", "top_2", *CLASSES, "error"]
    assert len(rows) == 23 and not any(".ipynb_checkpoints" in row["file"] for row in rows)
    errors = {row["file"].rsplit("/", 1)[1]: row["error"] for row in rows if row["error"]}
    assert set(errors) == {"broken.jpg", "readme.jpg"}
    assert all(reason.startswith("cannot be decoded") for reason in errors.values())
    import keras

    model = keras.saving.load_model(model_path)
    for row in rows:
        if row["error"]:
            assert row["predicted"] == "" and row["circle"] == ""
            continue
        expected = model.predict(load_image(row["file"], (32, 32)).numpy()[None], verbose=0)[0]
        np.testing.assert_allclose([float(row[name]) for name in CLASSES], expected, atol=1e-5)
        assert row["predicted"] == CLASSES[int(expected.argmax())]
        assert float(row["confidence"]) == pytest.approx(expected.max(), abs=1e-5)
        assert json.loads(row["top_2"]) == [CLASSES[i] for i in np.argsort(-expected)[:2]]


def test_tta_averages_each_image_with_its_mirror(model_path, photos, tmp_path):
    import keras

    predict_to_csv(model_path, [str(photos / "batch")], tmp_path / "tta.csv", batch_size=8, top_k=1, tta=True)
    model = keras.saving.load_model(model_path)
    for row in _rows(tmp_path / "tta.csv"):
        image = load_image(row["file"], (32, 32)).numpy()
        both = model.predict(np.stack([image, image[:, ::-1]]), verbose=0)
        np.testing.assert_allclose([float(row[name]) for name in CLASSES], both.mean(axis=0), atol=1e-5)


def test_a_model_scored_twice_is_traced_once_and_scores_its_current_weights(shapes_folder, monkeypatch):
    """Evaluate scores test, then val for temperature scaling: one trace serves both; another model, or the same
    model with new weights, still scores as itself."""
    from transfer.model import features
    from transfer.serve import predict

    traced = []
    real = features.compiled_forward
    monkeypatch.setattr(features, "compiled_forward", lambda model, size: traced.append(model) or real(model, size))
    paths = sorted(str(path) for path in (shapes_folder / "circle").glob("*"))[:6]
    images = np.stack([load_image(path, (32, 32)).numpy() for path in paths])
    first, second = tiny_classifier(), tiny_classifier(seed=1)
    once = predict.class_probabilities(first, paths, 4)
    again = predict.class_probabilities(first, paths[:3], 4, tta=True)
    assert traced == [first], "the second scoring reuses the first one's trace"
    np.testing.assert_allclose(once, first.predict(images, verbose=0), atol=1e-5)
    mirrored = (first.predict(images[:3], verbose=0) + first.predict(images[:3, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(again, mirrored, atol=1e-5)
    np.testing.assert_allclose(predict.class_probabilities(second, paths, 4), second.predict(images, verbose=0),
                               atol=1e-5)
    first.set_weights([weight * 0.5 for weight in first.get_weights()])
    np.testing.assert_allclose(predict.class_probabilities(first, paths, 4), first.predict(images, verbose=0),
                               atol=1e-5)
    assert traced == [first, second, first]


def test_inputs_are_files_folders_and_globs(photos):
    assert [path.name for path in expand_inputs([str(photos / "png_named.jpg")])] == ["png_named.jpg"]
    globbed = expand_inputs([str(photos / "batch" / "*.png")])
    assert len(globbed) == 10 and all(path.suffix == ".png" for path in globbed)
    both = expand_inputs([str(photos / "batch"), str(photos / "batch" / "circle_000.jpg")])
    assert len(both) == 20, "a file named twice is predicted once"
    with pytest.raises(DataError, match="'nowhere/\\*.jpg' matches no file"):
        expand_inputs(["nowhere/*.jpg"])
    with pytest.raises(DataError, match="'missing.jpg' is not a file, a folder or a glob"):
        expand_inputs(["missing.jpg"])


def test_the_command_line(model_path, photos, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "transfer", "predict", str(model_path), str(photos / "batch"),
         str(photos / "readme.jpg"), "--out", str(tmp_path / "cli.csv"), "--top-k", "5"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert not native_noise(result.stderr), result.stderr
    rows = _rows(tmp_path / "cli.csv")
    assert len(rows) == 21 and "top_3" in rows[0], "top-k is capped at the number of classes"
    missing = subprocess.run([sys.executable, "-m", "transfer", "predict", str(tmp_path / "none.keras"), str(photos)],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.keras'} does not exist; run the " \
        "stage that trains it first"


def test_the_command_line_writes_the_same_predictions_in_the_warm_server_and_in_its_own_process(
        model_path, photos, tmp_path):
    """``predict`` hands itself over to the warm stage server, as the stages do (tests/code/test_warm.py)."""
    written = {}
    for switch in ("1", "0"):
        out = tmp_path / f"warm{switch}.csv"
        result = subprocess.run([sys.executable, "-m", "transfer", "predict", str(model_path), str(photos),
                                 "--out", str(out), "--tta"], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "TRANSFER_WARM": switch})
        assert result.returncode == 0, result.stderr
        written[switch] = out.read_bytes()
    assert written["1"] == written["0"]


def test_every_command_explains_its_options():
    for command in ([], ["predict"], ["export"]):
        result = subprocess.run([sys.executable, "-m", "transfer", *command, "--help"], cwd=REPO,
                                capture_output=True, text=True)
        assert result.returncode == 0 and "usage: python -m transfer" in result.stdout
    export_help = subprocess.run([sys.executable, "-m", "transfer", "export", "--help"], cwd=REPO,
                                 capture_output=True, text=True).stdout
    for option in ("--format", "--quantize", "--out", "--images"):
        assert option in export_help
    predict_help = subprocess.run([sys.executable, "-m", "transfer", "predict", "--help"], cwd=REPO,
                                  capture_output=True, text=True).stdout
    for option in ("--out", "--batch-size", "--top-k", "--tta"):
        assert option in predict_help


def test_names_a_spreadsheet_would_run_or_split_are_written_safely(tmp_path, shapes_folder, monkeypatch):
    classes = ["=HYPERLINK(1)", "red rose", "@sum"]
    path = tmp_path / "model.keras"
    save_model(tiny_classifier(), path, classes)
    folder = tmp_path / "in"
    folder.mkdir()
    source = (shapes_folder / "circle" / "circle_000.jpg").read_bytes()
    (folder / "-cmd.jpg").write_bytes(source)
    odd = os.fsdecode(bytes(folder) + b"/caf\xe9.jpg")  # Latin-1 bytes: not a UTF-8 name
    with open(odd, "wb") as handle:
        handle.write(source)
    monkeypatch.chdir(folder)
    predict_to_csv(path, ["."], tmp_path / "out.csv", batch_size=4, top_k=3)  # relative names, as given
    rows = _rows(tmp_path / "out.csv")
    assert list(rows[0])[4:7] == ["'=HYPERLINK(1)", "red rose", "'@sum"]
    by_name = {row["file"]: row for row in rows}
    assert set(by_name) == {"'-cmd.jpg", "caf\\xe9.jpg"}, "the odd bytes shown, the CSV written whole"
    assert by_name["caf\\xe9.jpg"]["error"] == "file name is not valid UTF-8; rename it"
    good = by_name["'-cmd.jpg"]
    assert good["predicted"] in ("'=HYPERLINK(1)", "red rose", "'@sum")
    assert sorted(json.loads(good["top_3"].removeprefix("'"))) == sorted(classes), "a JSON list of the names"
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@")), cell


def test_what_only_looks_like_a_file_gets_a_row_and_a_reason(model_path, shapes_folder, tmp_path):
    """A FIFO (opening it would wait for a writer), a dangling link and a link to /dev/zero (endless) in a
    folder: each its own error row, and the photo beside them is still predicted."""
    folder = tmp_path / "odd"
    folder.mkdir()
    shutil.copy(shapes_folder / "circle" / "circle_000.jpg", folder / "photo.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "bomb.png").write_bytes(bomb_png())
    summary = predict_to_csv(model_path, [str(folder)], tmp_path / "out.csv", batch_size=8, top_k=1)
    errors = {row["file"].rsplit("/", 1)[1]: row["error"] for row in _rows(tmp_path / "out.csv")}
    assert summary["files"] == 5 and summary["predicted"] == 1
    assert errors == {
        "bomb.png": "20000x20000 pixels is over the 100-megapixel bound; scale it down",
        "gone.jpg": "cannot be read: a link to a missing file",
        "photo.jpg": "",
        "pipe.jpg": "cannot be read: a FIFO, not an image file",
        "zero.jpg": "cannot be read: a device, not an image file",
    }


RSS_SCRIPT = """
import resource, sys
from pathlib import Path
from transfer.serve.predict import predict_to_csv
model, photo, bomb, out = sys.argv[1:5]
predict_to_csv(Path(model), [photo], Path(out), 8, 1)  # TensorFlow and the model warmed up on a photo
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = predict_to_csv(Path(model), [bomb, photo], Path(out), 8, 1)
print(summary["errors"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_decompression_bomb_that_pillow_cannot_parse_costs_predict_no_memory(model_path, shapes_folder, tmp_path):
    """The 20000x20000 PNG of a few KB whose text chunk Pillow refuses: TensorFlow would decode 7 GB of it.
    The gate reads its size from the IHDR chunk and refuses it; peak memory grows by under 200 MB."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    result = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(model_path), str(shapes_folder / "circle" / "circle_000.jpg"),
         str(bomb), str(tmp_path / "out.csv")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    errors, growth_kib = (int(value) for value in result.stdout.split()[-2:])
    assert errors == 1 and growth_kib < 200 * 1024
