"""Predictions on new images: files, folders or globs in, one CSV row per file out.

The CSV has the layout of a Kaggle submission (one probability column per class, in the model's stored
class order) plus the predicted class, its confidence, the top-k classes (a JSON list) and an error column. A file that
cannot be read or decoded gets its row with the reason in ``error``; it never stops the batch.
"""

from __future__ import annotations

import glob
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from transfer.data.images import read_image_file
from transfer.data.pipeline import image_dataset
from transfer.errors import DataError
from transfer.io import displayed_path, spreadsheet_safe, write_csv
from transfer.layout import visible_files
from transfer.model.classifier import input_size

GLOB_CHARACTERS = "*?["


def probability_columns(classes: list[str], own: tuple[str, ...]) -> list[str]:
    """The name of each class's probability column in a table whose own columns are ``own``: the class name,
    or, when any class is named like one of ``own``, ``probability/<class>`` for every class (a class name never
    holds a ``/``, so no class can then collide, and one rule names every column)."""
    if set(classes) & set(own):
        return [f"probability/{name}" for name in classes]
    return list(classes)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Every file named by ``inputs``: files as given, folders searched recursively, globs expanded.

    Hidden files and folders are skipped inside folders; a file named explicitly is always kept.

    Raises:
        DataError: an input that names nothing.
    """
    files: list[Path] = []
    for item in inputs:
        if any(char in item for char in GLOB_CHARACTERS) and not Path(item).exists():
            matches = sorted(Path(match) for match in glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"{item!r} matches no file")
            files.extend(match for match in matches if not match.is_dir())
        elif Path(item).is_dir():
            files.extend(visible_files(Path(item), special=True))
        elif Path(item).exists() or Path(item).is_symlink():  # a FIFO or a dangling link gets its row too
            files.append(Path(item))
        else:
            raise DataError(f"{item!r} is not a file, a folder or a glob that matches files")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise DataError(f"no files found in {', '.join(inputs)}")
    return unique


def _scored(forward, batch, tta: bool) -> np.ndarray:
    """``forward``'s probabilities for ``batch``; with ``tta``, averaged with the mirrored batch's (the one
    mirror-averaging of predictions, for evaluate's ``evaluate.tta`` and predict's ``--tta`` alike)."""
    import tensorflow as tf

    scores = forward(batch).numpy()
    return (scores + forward(tf.image.flip_left_right(batch)).numpy()) / 2 if tta else scores


_last_forward: tuple = (None, None)  # (model, its traced forward pass): see traced_forward


def traced_forward(model):
    """``model``'s traced forward pass at its input size, traced once for as long as it is the model being scored:
    evaluate scores the validation photos too when it fits a temperature, and the second scoring reuses the first's
    trace (about a second). Only the latest model is kept, so at most one model outlives its caller."""
    global _last_forward
    from transfer.model.features import compiled_forward

    if _last_forward[0] is not model:
        _last_forward = (model, compiled_forward(model, input_size(model)))
    return _last_forward[1]


def _scored_batches(model, paths: list[str], batch_size: int, tta: bool):
    """Each batch's probabilities, in file order, from one compiled forward pass.

    The images go in batches of one size (at most ``batch_size``, as even as the count allows, the last one
    padded): every call then has one shape, traced once, and the CPU kernels prepared for it serve them all (a
    second shape for the last batch costs a second preparation, which on a test split of a few dozen photos is
    as long as the forward passes). Traced and padded, 320 flowers on MobileNetV2 0.35 took 4.3 to 4.7 s, against
    7.8 to 8.0 s through Keras' eager call in batches as they came.
    """
    from transfer.model.features import padded

    if not paths:
        return
    size = input_size(model)
    even = -(-len(paths) // -(-len(paths) // batch_size))
    forward = traced_forward(model)
    for batch in image_dataset(paths, size, even):
        yield _scored(forward, padded(batch, even), tta)[:int(batch.shape[0])]


def class_probabilities(model, paths: list[str], batch_size: int, tta: bool = False) -> np.ndarray:
    """Probabilities for image files in their order; with ``tta``, averaged with the horizontal flips'.

    Args:
        model: a classifier taking raw pixels.
        paths: image files the pipeline's decoder can read.
        batch_size: images per forward pass, at most (see :func:`_scored_batches`).
        tta: test-time augmentation: each image is also scored mirrored, at twice the cost.
    """
    if not paths:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    return np.concatenate(list(_scored_batches(model, paths, batch_size, tta)))


def predict_files(
    model, files: list[Path], batch_size: int = 32, tta: bool = False, progress: bool = True
) -> tuple[np.ndarray, list]:
    """Class probabilities for each file; NaN rows for files that cannot be used.

    With ``tta``, each image's probabilities are averaged with its mirror image's, as ``evaluate.tta`` does.

    Returns:
        (probabilities [files, classes], the problem of each file or None).
    """
    from tqdm import tqdm

    with ThreadPoolExecutor(4) as pool:
        problems = [problem for problem, _ in pool.map(read_image_file, files)]
    good = [i for i, problem in enumerate(problems) if problem is None]
    classes = int(model.output_shape[-1])
    probabilities = np.full((len(files), classes), np.nan, dtype=np.float32)
    position = 0
    with tqdm(total=len(good), unit="img", desc="predict", disable=not progress) as bar:
        for scores in _scored_batches(model, [str(files[i]) for i in good], batch_size, tta):
            probabilities[good[position : position + len(scores)]] = scores
            position += len(scores)
            bar.update(len(scores))
    return probabilities, problems


def prediction_table(
    files: list[Path], probabilities: np.ndarray, problems: list, classes: list[str], top_k: int
) -> tuple[list[str], list[list]]:
    """The CSV header and rows: file, predicted, confidence, top_k, one column per class, error.

    The top-k classes are a JSON list (a class name may hold spaces or commas). File and class names that a
    spreadsheet would run as a formula are written as text (:func:`transfer.io.spreadsheet_safe`), and a file
    name that is not UTF-8 shows its odd bytes as ``\\xNN``.
    """
    k = min(top_k, len(classes))
    names = [spreadsheet_safe(name) for name in classes]
    own = ("file", "predicted", "confidence", f"top_{k}", "error")
    header = [*own[:4], *(spreadsheet_safe(name) for name in probability_columns(classes, own)), own[4]]
    rows = []
    for file, scores, problem in zip(files, probabilities, problems, strict=True):
        shown = spreadsheet_safe(displayed_path(file))
        if problem is not None:
            rows.append([shown, "", "", "", *[""] * len(classes), problem])
            continue
        order = np.argsort(-scores, kind="stable")[:k]
        rows.append([
            shown, names[order[0]], f"{scores[order[0]]:.6f}",
            spreadsheet_safe(json.dumps([classes[i] for i in order], ensure_ascii=False)),
            *(f"{value:.6f}" for value in scores), "",
        ])
    return header, rows


def predict_to_csv(
    model_path: Path, inputs: list[str], out: Path, batch_size: int, top_k: int, tta: bool = False
) -> dict:
    """Predict every input image with a saved model and write the CSV whole; returns a summary."""
    from transfer.model.classifier import load_model

    model, classes = load_model(model_path)
    files = expand_inputs(inputs)
    probabilities, problems = predict_files(model, files, batch_size, tta)
    header, rows = prediction_table(files, probabilities, problems, classes, top_k)
    write_csv(out, header, rows)
    failed = sum(problem is not None for problem in problems)
    return {"files": len(files), "predicted": len(files) - failed, "errors": failed, "out": str(out)}
