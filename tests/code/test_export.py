"""Exports load in a fresh process without this project and agree with the Keras model."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, native_noise, tiny_classifier
from transfer.data.pipeline import load_image
from transfer.errors import DataError
from transfer.model.classifier import save_model
from transfer.serve import export
from transfer.serve.export import export_model

CLASSES = ["circle", "square", "triangle"]

# Run in a separate interpreter, outside the repository, with TensorFlow and numpy only.
FRESH_SAVED_MODEL = """
import sys, numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
np.save(sys.argv[3], model.serve(tf.constant(np.load(sys.argv[2]))).numpy())
"""
FRESH_TFLITE = """
import sys, warnings, numpy as np, tensorflow as tf
warnings.simplefilter("ignore")
interpreter = tf.lite.Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
out = []
for image in np.load(sys.argv[2]):
    interpreter.set_tensor(given["index"], image[None])
    interpreter.invoke()
    out.append(interpreter.get_tensor(taken["index"])[0])
np.save(sys.argv[3], np.stack(out))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_folder):
    folder = tmp_path_factory.mktemp("export")
    model = tiny_classifier()
    save_model(model, folder / "model.keras", CLASSES)
    images = sorted(shapes_folder.rglob("*.*"))
    return folder / "model.keras", images


def _fresh(script: str, export_path, images: np.ndarray, tmp_path) -> np.ndarray:
    np.save(tmp_path / "images.npy", images.astype(np.float32))
    subprocess.run([sys.executable, "-c", script, str(export_path), str(tmp_path / "images.npy"),
                    str(tmp_path / "out.npy")], cwd=tmp_path, check=True, capture_output=True)
    return np.load(tmp_path / "out.npy")


def _keras(model_path, images: np.ndarray) -> np.ndarray:
    import keras

    return keras.saving.load_model(model_path).predict(images, verbose=0)


def test_a_saved_model_takes_raw_pixels_of_any_size_in_a_fresh_process(trained, tmp_path):
    model_path, images = trained
    report = export_model(model_path, "saved_model", "none", None, images)
    folder = model_path.with_name("model_saved_model")
    assert report["top1_agreement"] == 1.0 and report["images"] == 60
    assert json.loads((folder.parent / "model_saved_model.classes.json").read_text()) == CLASSES
    big = np.stack([load_image(str(path), (57, 81)).numpy() for path in images[:8]])  # not the model's size
    np.testing.assert_allclose(_fresh(FRESH_SAVED_MODEL, folder, big, tmp_path), _keras(model_path, big), atol=1e-5)


@pytest.mark.parametrize(("quantize", "tolerance"), [("none", 1e-5), ("float16", 0.02)])
def test_a_float_tflite_export_agrees_in_a_fresh_process(trained, tmp_path, quantize, tolerance):
    model_path, images = trained
    out = tmp_path / f"model_{quantize}.tflite"
    report = export_model(model_path, "tflite", quantize, out, images)
    assert report["top1_agreement"] >= 0.99 and report["input"].endswith("32x32")
    assert json.loads((tmp_path / f"model_{quantize}.export.json").read_text()) == report
    resized = np.stack([load_image(str(path), (32, 32)).numpy() for path in images])
    fresh = _fresh(FRESH_TFLITE, out, resized, tmp_path)
    reference = _keras(model_path, resized)
    assert (fresh.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.99
    np.testing.assert_allclose(fresh, reference, atol=tolerance)


def test_the_export_command_writes_its_report_and_no_tensorflow_chatter(trained, tmp_path):
    model_path, images = trained
    out = tmp_path / "model.tflite"
    result = subprocess.run([sys.executable, "-m", "transfer", "export", str(model_path), "--format", "tflite",
                             "--out", str(out), "--images", *map(str, images[:8])],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top1_agreement"] == 1.0 and out.is_file()
    assert not native_noise(result.stderr), result.stderr


def test_an_int8_export_is_smaller_and_its_agreement_reported(trained, tmp_path):
    model_path, images = trained
    report = export_model(model_path, "tflite", "int8", tmp_path / "model_int8.tflite", images)
    assert 0 <= report["top1_agreement"] <= 1 and report["max_abs_difference"] >= 0
    assert (tmp_path / "model_int8.classes.json").is_file()


def test_an_export_that_disagrees_is_refused_and_not_written(trained, tmp_path, monkeypatch):
    model_path, images = trained
    monkeypatch.setattr(export, "tflite_predict", lambda path, batch: np.roll(_keras(model_path, batch), 1, axis=1))
    # Every answer moved; the few that this barely trained model gives confidently are what the gate catches.
    with pytest.raises(DataError, match=r"agrees with the Keras model on \d+\.\d% of 60 images \(counting \d+ "
                                        r"near-tie swap\(s\) as agreeing\), below 99%; nothing was written"):
        export_model(model_path, "tflite", "none", tmp_path / "model.tflite", images)
    assert list(tmp_path.iterdir()) == []


def test_a_swap_on_a_near_tie_counts_as_agreeing_and_a_confident_one_does_not():
    reference = np.array([[0.70, 0.20, 0.10], [0.48, 0.47, 0.05], [0.10, 0.85, 0.05]], dtype=np.float32)
    rounded = reference.copy()
    rounded[1] = [0.47, 0.48, 0.05]  # the near tie (margin 0.01) swapped by a 0.01 move: rounding
    report = export.agreement(reference, rounded)
    assert report["top1_agreement"] == pytest.approx(2 / 3) and report["near_tie_swaps"] == 1
    assert report["top1_agreement_with_near_ties"] == 1.0
    broken = reference.copy()
    broken[1] = [0.05, 0.90, 0.05]  # the same image, but its probabilities moved far: not rounding
    broken[2] = [0.85, 0.10, 0.05]  # and a confident answer changed
    report = export.agreement(reference, broken)
    assert report["near_tie_swaps"] == 0 and report["top1_agreement_with_near_ties"] == pytest.approx(1 / 3)
    # Three classes within 0.02: the answer moved by 0.02 to the third, not to the runner-up. Not a swap of two.
    close = np.array([[0.34, 0.335, 0.325]], dtype=np.float32)
    report = export.agreement(close, np.array([[0.33, 0.325, 0.345]], dtype=np.float32))
    assert report["near_tie_swaps"] == 0 and report["top1_agreement_with_near_ties"] == 0.0
    assert export.agreement(close, np.array([[0.33, 0.345, 0.325]], dtype=np.float32))["near_tie_swaps"] == 1


@pytest.mark.parametrize(
    ("fmt", "quantize", "images", "match"),
    [("onnx", "none", True, "--format 'onnx' is invalid: expected one of saved_model, tflite"),
     ("saved_model", "int8", True, "--quantize applies to --format tflite only"),
     ("tflite", "none", False, "no images to check the export with")],
)
def test_bad_requests_are_clear_errors(trained, tmp_path, fmt, quantize, images, match):
    model_path, shapes = trained
    with pytest.raises(DataError, match=match):
        export_model(model_path, fmt, quantize, tmp_path / "out", shapes if images else [])


def test_a_mirror_averaging_model_exports_and_still_ignores_a_flip(tmp_path, shapes_folder):
    save_model(tiny_classifier(mirror=True), tmp_path / "model.keras", CLASSES)
    images = sorted(shapes_folder.rglob("*.*"))[:12]
    report = export_model(tmp_path / "model.keras", "tflite", "none", tmp_path / "model.tflite", images)
    assert report["top1_agreement"] == 1.0
    resized = np.stack([load_image(str(path), (32, 32)).numpy() for path in images])
    fresh = _fresh(FRESH_TFLITE, tmp_path / "model.tflite", np.concatenate([resized, resized[:, :, ::-1]]), tmp_path)
    np.testing.assert_allclose(fresh[:12], _keras(tmp_path / "model.keras", resized), atol=1e-5)
    np.testing.assert_allclose(fresh[12:], fresh[:12], atol=1e-5)


def test_the_export_help_reads_as_written():
    result = subprocess.run([sys.executable, "-m", "transfer", "export", "--help"], capture_output=True, text=True,
                            check=True, cwd=REPO)
    assert "at least 99% of them" in " ".join(result.stdout.split()) and "%%" not in result.stdout
