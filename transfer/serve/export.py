"""Exports for serving and mobile: a TensorFlow SavedModel and a TFLite model, each checked against Keras.

Both take raw RGB pixels in [0, 255] like ``models/model.keras``; the SavedModel also resizes (any image
size in), the TFLite model takes images already resized to the model's input size (fixed shapes keep
mobile runtimes fast). The class names go beside each export in ``<name>.classes.json``. Before an export
is put in place, its predictions on real images are compared with the Keras model's: a float export whose
top-1 agreement is below :data:`MIN_FLOAT_AGREEMENT` is refused; an int8 one is reported. A swap of the two
classes the Keras model itself ranks first and second, within :data:`NEAR_TIE` of each other, with no probability
moved by as much, counts as agreeing: float16 rounding moves probabilities by a few hundredths, enough to swap
classes that close.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from transfer.data.images import read_image_file
from transfer.data.pipeline import load_image
from transfer.errors import DataError
from transfer.io import atomic_path, remove, write_json
from transfer.model.classifier import classes_path, input_size, load_model

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "float16", "int8")
MIN_FLOAT_AGREEMENT = 0.99
# A top-two margin below this is a near tie. float16 weights moved MobileNetV2 0.35's probabilities by up to 0.03
# on the 75 flowers test photos at 288 px, and swapped the one photo whose margin was 0.004.
NEAR_TIE = 0.05
INT8_CALIBRATION_IMAGES = 100


def default_output(model_path: Path, fmt: str, quantize: str) -> Path:
    """``models/model.keras`` -> ``models/model_saved_model``, ``models/model_float32.tflite``, ``..._int8.tflite``."""
    if fmt == "saved_model":
        return model_path.with_name(f"{model_path.stem}_saved_model")
    precision = "float32" if quantize == "none" else quantize
    return model_path.with_name(f"{model_path.stem}_{precision}.tflite")


def _load_images(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """The usable images among ``paths``, resized as the model resizes them, as one float32 array."""
    usable = [path for path in paths if read_image_file(path)[0] is None]
    if not usable:
        raise DataError("none of the check images can be decoded")
    return np.stack([load_image(str(path), size).numpy() for path in usable])


def _saved_model(model, folder: Path) -> None:
    import tensorflow as tf

    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="image")
    model.export(str(folder), format="tf_saved_model", input_signature=[spec], verbose=False)


def _tflite_bytes(model, quantize: str, size: tuple[int, int], calibration: np.ndarray, scratch: Path) -> bytes:
    import tensorflow as tf

    spec = tf.TensorSpec([None, *size, 3], tf.float32, name="image")
    model.export(str(scratch), format="tf_saved_model", input_signature=[spec], verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(scratch))
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        # Weights and activations in int8, calibrated on real images; input and output stay float32.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    return converter.convert()


def saved_model_predict(folder: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from an exported SavedModel's serving function."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(folder))
    return np.asarray(loaded.serve(tf.constant(images, tf.float32)))


def tflite_predict(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from a TFLite model, one image at a time as a phone would run it."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter announces its move to LiteRT
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        interpreter.set_tensor(given["index"], image[None].astype(given["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(taken["index"])[0])
    return np.stack(outputs).astype(np.float32)


def agreement(reference: np.ndarray, exported: np.ndarray) -> dict:
    """How closely an export follows the Keras model: top-1 agreement, the swaps that rounding explains, and the
    largest probability gap.

    A near-tie swap: the Keras model's top two probabilities are within :data:`NEAR_TIE` of each other, the
    export's answer is the Keras model's runner-up (the two swapped places), and no probability moved by as much
    as :data:`NEAR_TIE`. It counts as agreeing for the gate (``top1_agreement_with_near_ties``); a broken export
    moves probabilities far more, or lands on another class, and is not excused.
    """
    answer = exported.argmax(axis=1)
    same = reference.argmax(axis=1) == answer
    if reference.shape[1] > 1:
        order = np.argsort(reference, axis=1)
        rows = np.arange(len(reference))
        margin = reference[rows, order[:, -1]] - reference[rows, order[:, -2]]
        to_runner_up = answer == order[:, -2]
    else:
        margin, to_runner_up = np.ones(len(same)), np.zeros(len(same), dtype=bool)
    moved = np.abs(reference - exported).max(axis=1)
    near_tie_swaps = ~same & to_runner_up & (margin < NEAR_TIE) & (moved < NEAR_TIE)
    return {
        "images": len(reference),
        "top1_agreement": float(same.mean()),
        "near_tie_swaps": int(near_tie_swaps.sum()),
        "top1_agreement_with_near_ties": float((same | near_tie_swaps).mean()),
        "max_abs_difference": float(moved.max()),
    }


def export_model(model_path: Path, fmt: str, quantize: str, out: Path | None, check_images: list[Path]) -> dict:
    """Export a saved classifier, check it on real images, and put it in place only if it passes.

    Args:
        model_path: a ``.keras`` model written by the pipeline (class names beside it).
        fmt: ``saved_model`` or ``tflite``.
        quantize: ``none``, ``float16`` or ``int8`` (TFLite only).
        out: where to write; None for :func:`default_output`.
        check_images: real images to compare predictions on (and, for int8, to calibrate with).

    Returns:
        The report written beside the export as ``<name>.export.json``.
    """
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r} is invalid: expected one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise DataError(f"--quantize {quantize!r} is invalid: expected one of {', '.join(QUANTIZATIONS)}")
    if fmt == "saved_model" and quantize != "none":
        raise DataError("--quantize applies to --format tflite only; a SavedModel keeps float32 weights")
    if not check_images:
        raise DataError("no images to check the export with: pass --images, or run the pipeline's split stage")
    model, classes = load_model(model_path)
    out = out or default_output(model_path, fmt, quantize)
    size = input_size(model)
    images = _load_images(check_images, size)
    reference = model.predict(images, batch_size=32, verbose=0)
    with atomic_path(out) as temporary:
        if fmt == "saved_model":
            _saved_model(model, temporary)
            exported = saved_model_predict(temporary, images)
        else:
            scratch = temporary.with_name(temporary.name + ".saved_model")
            try:
                calibration = images[:INT8_CALIBRATION_IMAGES]
                temporary.write_bytes(_tflite_bytes(model, quantize, size, calibration, scratch))
            finally:
                remove(scratch)
            exported = tflite_predict(temporary, images)
        report = {
            "model": str(model_path), "format": fmt, "quantize": quantize, "export": str(out),
            "input": "raw RGB pixels in [0, 255], " + ("any size" if fmt == "saved_model" else f"{size[0]}x{size[1]}"),
            "bytes": _size_of(temporary), **agreement(reference, exported),
        }
        if quantize != "int8" and report["top1_agreement_with_near_ties"] < MIN_FLOAT_AGREEMENT:
            raise DataError(
                f"the {fmt} export agrees with the Keras model on {report['top1_agreement_with_near_ties']:.1%} of "
                f"{len(images)} images (counting {report['near_tie_swaps']} near-tie swap(s) as agreeing), below "
                f"{MIN_FLOAT_AGREEMENT:.0%}; nothing was written"
            )
    write_json(classes_path(out), classes)
    write_json(out.with_name(out.stem + ".export.json"), report)
    return report


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names)
