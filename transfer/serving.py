"""An MLflow model that serves photos: encoded image bytes in, class name and probabilities out.

Logged beside the Keras model of every run (as ``photo_model``), so that

    mlflow models serve -m runs:/<run id>/photo_model --env-manager local -p 5001

answers a POST of JPEG, PNG, GIF or BMP bytes (base64 in JSON, any size) with the predicted class, its
probability and every class's probability, computed exactly as ``python -m transfer predict`` computes them: the
pipeline's decoder, the same resize, the same model. A photo that cannot be decoded gets its row with the reason
in ``error`` (its label empty, its probabilities NaN); the other rows are still answered.

Request: ``{"dataframe_split": {"columns": ["image"], "data": [["<base64 bytes>"], ...]}}``.
Answer: ``{"predictions": [{"label": "roses", "confidence": 0.93, "error": "", "daisy": 0.01, ...}, ...]}``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import mlflow
import numpy as np

from transfer.models import classes_path

IMAGE_COLUMN = "image"
LABEL, CONFIDENCE, ERROR = "label", "confidence", "error"
PHOTO_MODEL = "photo_model"
BATCH = 32


class PhotoClassifier(mlflow.pyfunc.PythonModel):
    """Image bytes to class probabilities with a saved ``model.keras`` and its class names."""

    # The signature is stated when logging; MLflow's type-hint validation (and its warning that predict has
    # no type hints, at every import) would only repeat it.
    _skip_type_hint_validation = True

    def load_context(self, context):
        from transfer.models import input_size, load_model

        self.model, self.classes = load_model(Path(context.artifacts["model"]))
        self.size = input_size(self.model)

    def predict(self, context, model_input, params=None):
        return classify_bytes(self.model, self.classes, self.size, _images_of(model_input))


def _images_of(model_input) -> list:
    """The ``image`` column of a request as a list of bytes (MLflow has decoded the base64 already)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs a column {IMAGE_COLUMN!r} of encoded image bytes; it has "
                             f"{list(model_input.columns)}")
        return list(model_input[IMAGE_COLUMN])
    return list(model_input)


def classify_bytes(model, classes: list[str], size: tuple[int, int], images: list):
    """A ``pandas.DataFrame``, one row per image: label, confidence, error ('' when fine) and one probability
    column per class; an image that cannot be used has its reason in error, an empty label and NaN figures.

    Decoded and resized by :func:`transfer.datasets.decode_resized`, as every image of the pipeline is, so the
    probabilities are the ones ``python -m transfer predict`` writes for the same files.
    """
    import pandas as pd
    import tensorflow as tf

    from transfer.datasets import decode_problem, decode_resized, exif_orientation

    data = [bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else None for image in images]
    problems = [decode_problem(item) if item is not None else "not image bytes" for item in data]
    good = [i for i, problem in enumerate(problems) if problem is None]
    probabilities = np.full((len(data), len(classes)), np.nan)
    for start in range(0, len(good), BATCH):
        chosen = good[start : start + BATCH]
        batch = tf.stack([decode_resized(data[i], size, exif_orientation(data[i])) for i in chosen])
        probabilities[chosen] = model(batch, training=False).numpy()
    rows = []
    for scores, problem in zip(probabilities, problems, strict=True):
        if problem is not None:
            rows.append({LABEL: "", CONFIDENCE: np.nan, ERROR: problem, **dict.fromkeys(classes, np.nan)})
            continue
        best = int(np.argmax(scores))
        rows.append({LABEL: classes[best], CONFIDENCE: float(scores[best]), ERROR: "",
                     **{name: float(value) for name, value in zip(classes, scores, strict=True)}})
    return pd.DataFrame(rows, columns=[LABEL, CONFIDENCE, ERROR, *classes])


def log_photo_model(model_path: Path, classes: list[str]) -> None:
    """Log the photo-serving model into the active run, beside the Keras model it wraps.

    Args:
        model_path: the saved ``model.keras`` (its class names beside it).
        classes: the class names, in the model's order.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    overlap = {LABEL, CONFIDENCE, ERROR} & set(classes)
    if overlap:
        raise ValueError(f"class names {sorted(overlap)} collide with the answer's own columns; photo model skipped")
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("string", LABEL), ColSpec("double", CONFIDENCE), ColSpec("string", ERROR),
                        *(ColSpec("double", name) for name in classes)]),
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
        code_paths=[str(Path(__file__).resolve().parent)],
        signature=signature,
        # Stated, not inferred: inference reloads the model in a subprocess, which costs minutes.
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", "pillow", "pandas",
                          f"mlflow=={mlflow.__version__}"],
    )
