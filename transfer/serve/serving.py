"""An MLflow model that serves photos: encoded image bytes in, class name and probabilities out.

Logged beside the Keras model of every run (as ``photo_model``), so that

    mlflow models serve -m runs:/<run id>/photo_model --env-manager local -p 5001

answers a POST of JPEG, PNG, GIF, BMP or WebP images (base64 text in JSON, any size) with the predicted class, its
probability and every class's probability, computed exactly as ``python -m transfer predict`` computes them: the
pipeline's decoder and its decode gate, the same resize, the same model. Every cell gets its own answer: one
that is not base64, not text, empty, or not an image the gate admits gets its row with the reason in ``error``
(its label empty, its figures null); the other rows are still answered. The base64 is decoded here, not by MLflow,
which would fail the whole request for one bad cell.

Request: ``{"dataframe_split": {"columns": ["image"], "data": [["<base64 text>"], ...]}}``.
Answer: ``{"predictions": [{"label": "roses", "confidence": 0.93, "error": "", "daisy": 0.01, ...}, ...]}``: one
probability column per class, named by the class; if a class is itself named ``label``, ``confidence`` or
``error``, every probability column is named ``probability/<class>`` instead (no class name holds a ``/``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import warnings
from pathlib import Path

import mlflow
import numpy as np

from transfer.io import shortened
from transfer.model.classifier import classes_path

IMAGE_COLUMN = "image"
LABEL, CONFIDENCE, ERROR = "label", "confidence", "error"
PHOTO_MODEL = "photo_model"
BATCH = 32


class PhotoClassifier(mlflow.pyfunc.PythonModel):
    """Image bytes to class probabilities with a saved ``model.keras`` and its class names."""

    # The signature is stated when logging; MLflow's type-hint validation (and its warning that predict has
    # no type hints, at every import) would only repeat it. A private MLflow switch, with no public one;
    # tests/code/test_serving.py pins that MLflow still honours it.
    _skip_type_hint_validation = True

    def load_context(self, context):
        from transfer.process import quiet_native_logs

        quiet_native_logs()  # TensorFlow's start-up chatter out of the server's log: imported next
        from transfer.model.classifier import input_size, load_model

        self.model, self.classes = load_model(Path(context.artifacts["model"]))
        self.size = input_size(self.model)
        self.forward = warmed_forward(self.model, self.size)

    def predict(self, context, model_input, params=None):
        return classify_bytes(self.forward, self.classes, self.size, _images_of(model_input))


def warmed_forward(model, size: tuple[int, int]):
    """``model``'s forward pass at ``size``, traced (:func:`transfer.model.features.compiled_forward`) and run once on
    a blank image as the served model loads, so that every request, the first one included, runs the graph.

    On MobileNetV2 0.35 at 288 px (2 cores, decoding included), a request of one photo took 20 to 35 ms against 113 to
    159 through Keras' eager call, one of 32 photos 0.33 to 0.39 s against 0.55 to 0.61; loading, 1.3 to 1.8 s
    against 0.7 to 1.0.
    """
    import tensorflow as tf

    from transfer.model.features import compiled_forward

    forward = compiled_forward(model, size)
    forward(tf.zeros((1, *size, 3)))
    return forward


def _images_of(model_input) -> list:
    """The ``image`` column of a request as a list of cells, as they came."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs a column {IMAGE_COLUMN!r} of base64-encoded images; it has "
                             f"{list(model_input.columns)}")
        return list(model_input[IMAGE_COLUMN])
    return list(model_input)


def image_bytes(cell) -> tuple[bytes | None, str | None]:
    """(the encoded image a request cell holds, or None; why it holds none, or None).

    A cell is base64 text (what JSON can carry), or bytes when the model is called in Python.
    """
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell), None
    if isinstance(cell, str):
        if not cell.strip():
            return None, "empty cell: expected a base64-encoded image"
        try:
            return base64.b64decode(cell, validate=True), None
        except (binascii.Error, ValueError) as error:
            return None, f"not valid base64 text ({error}): send the image file's bytes base64-encoded"
    if cell is None or (isinstance(cell, float) and cell != cell):
        return None, "empty cell: expected a base64-encoded image"
    return None, (f"a {type(cell).__name__} ({shortened(repr(cell), 40)}), not an image: send the image file's "
                  "bytes base64-encoded")


def classify_bytes(forward, classes: list[str], size: tuple[int, int], images: list):
    """A ``pandas.DataFrame``, one row per request cell: label, confidence, error ('' when fine) and one
    probability column per class (:func:`transfer.serve.predict.probability_columns`); a cell that gives no usable
    image has its reason in error, an empty label and None figures (``null`` in JSON, never NaN).

    Decoded and resized by :func:`transfer.data.pipeline.decode_resized`, as every image of the pipeline is, after the
    decode gate (:func:`transfer.data.images.decode_problem`) has read the size from the header, so the probabilities
    are the ones ``python -m transfer predict`` writes for the same files, and a request's memory is bounded
    by the gate's pixel bound, one image at a time, whatever its bytes claim. ``forward``: the model's forward pass
    (:func:`warmed_forward`), images in, probabilities out.
    """
    import pandas as pd
    import tensorflow as tf

    from transfer.data.images import decode_problem, exif_orientation
    from transfer.data.pipeline import decode_resized
    from transfer.serve.predict import probability_columns

    data, problems = [], []
    for cell in images:
        encoded, problem = image_bytes(cell)
        data.append(encoded)
        problems.append(problem or decode_problem(encoded))
    good = [i for i, problem in enumerate(problems) if problem is None]
    probabilities = np.zeros((len(data), len(classes)))
    for start in range(0, len(good), BATCH):
        chosen = good[start : start + BATCH]
        batch = tf.stack([decode_resized(data[i], size, exif_orientation(data[i])) for i in chosen])
        probabilities[chosen] = forward(batch).numpy()
    columns = probability_columns(classes, (LABEL, CONFIDENCE, ERROR))
    rows = []
    for scores, problem in zip(probabilities, problems, strict=True):
        if problem is not None:
            rows.append({LABEL: "", CONFIDENCE: None, ERROR: problem, **dict.fromkeys(columns)})
            continue
        best = int(np.argmax(scores))
        rows.append({LABEL: classes[best], CONFIDENCE: float(scores[best]), ERROR: "",
                     **{name: float(value) for name, value in zip(columns, scores, strict=True)}})
    # Object columns keep None as None, which MLflow writes as null; a float column would turn it into NaN.
    return pd.DataFrame(rows, columns=[LABEL, CONFIDENCE, ERROR, *columns], dtype=object)


def log_photo_model(model_path: Path, classes: list[str]) -> None:
    """Log the photo-serving model into the active run, beside the Keras model it wraps.

    Args:
        model_path: the saved ``model.keras`` (its class names beside it).
        classes: the class names, in the model's order.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    from transfer.serve.predict import probability_columns

    signature = ModelSignature(
        # Any type, not MLflow's binary: a binary column makes MLflow decode the base64 itself and fail the whole
        # request on one bad cell; here each cell is decoded, or answered with its own error (image_bytes).
        inputs=Schema([ColSpec(AnyType(), IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("string", LABEL), ColSpec("double", CONFIDENCE, required=False),
                        ColSpec("string", ERROR),
                        *(ColSpec("double", name, required=False)
                          for name in probability_columns(classes, (LABEL, CONFIDENCE, ERROR)))]),
    )
    # MLflow advises type hints, an input example and models-from-code here; the signature is stated, an example
    # would load the model once more at logging time, and the class is pickled by reference to this module.
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            _log(model_path, signature)
    finally:
        pyfunc_log.setLevel(level)


def _log(model_path: Path, signature) -> None:
    import keras
    import tensorflow as tf

    mlflow.pyfunc.log_model(
        name=PHOTO_MODEL,
        python_model=PhotoClassifier(),
        artifacts={"model": str(model_path), "classes": str(classes_path(model_path))},
        # The decoder and the loader are this package's: shipped with the model, so serving runs them as is.
        code_paths=[str(Path(__file__).resolve().parents[1])],
        signature=signature,
        # Stated, not inferred: inference reloads the model in a subprocess, which costs minutes.
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                          f"pillow=={_version('pillow')}", f"pandas=={_version('pandas')}",
                          f"mlflow=={mlflow.__version__}"],
    )


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
