"""``python -m transfer``: use a trained model outside the pipeline.

    python -m transfer predict models/model.keras photos/ more/*.jpg --out predictions.csv
    python -m transfer export models/model.keras --format tflite --quantize float16
    python -m transfer exclude --splits train,val            # the flagged label suspects, into curation/exclude.csv
    python -m transfer compare                               # one line per experiment
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from transfer.errors import UserError, one_line
from transfer.serve.export import FORMATS, QUANTIZATIONS  # light: TensorFlow loads only when an export runs

DEFAULT_MODEL = Path("models/model.keras")


def _check_images(given: list[str] | None) -> list[Path]:
    """The images an export is checked on: those given, else the pipeline's test split if there is one."""
    from transfer.serve.predict import expand_inputs

    if given:
        return expand_inputs(given)
    from transfer.data.splits import read_classes, read_split
    from transfer.layout import RAW, SPLITS

    if (SPLITS / "test.csv").is_file():
        paths, _ = read_split(SPLITS, "test", RAW, read_classes(SPLITS))
        return [Path(path) for path in paths]
    return []


def _predict(args: argparse.Namespace) -> dict:
    from transfer.serve.predict import predict_to_csv

    return predict_to_csv(args.model, args.inputs, args.out, args.batch_size, args.top_k, args.tta)


def _export(args: argparse.Namespace) -> dict:
    from transfer.serve.export import export_model

    return export_model(args.model, args.format, args.quantize, args.out, _check_images(args.images))


def _exclude(args: argparse.Namespace) -> dict:
    from transfer.data.quality_report import add_exclusions

    splits = [name.strip() for name in args.splits.split(",") if name.strip()]
    return add_exclusions(args.report, args.file, splits, args.top, args.outliers)


def _compare(args: argparse.Namespace) -> None:
    from transfer.compare import compare

    print("\n".join(compare(args.repo)))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m transfer",
        description="Use a classifier trained by the pipeline: predict on new images, or export it; curate the "
                    "data; compare experiments.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict", help="classify images, folders or globs into a CSV",
        description="Classify images and write one CSV row per file: file, predicted class, confidence, the "
                    "top-k classes, one probability column per class (in the model's class order, as in a "
                    "Kaggle submission) and an error column. Files that cannot be read or decoded get their "
                    "reason in the error column; they never stop the batch.",
    )
    predict.add_argument("model", type=Path, help="a .keras model written by the pipeline (default layout: "
                         "models/model.keras, with models/model.classes.json beside it)")
    predict.add_argument("inputs", nargs="+", metavar="PATH",
                         help="image files, folders (searched recursively, hidden entries skipped) or quoted "
                              "globs such as 'photos/**/*.jpg'")
    predict.add_argument("--out", type=Path, default=Path("predictions.csv"),
                         help="the CSV to write, whole or not at all (default: predictions.csv)")
    predict.add_argument("--batch-size", type=_positive, default=32, help="images per forward pass (default: 32)")
    predict.add_argument("--top-k", type=_positive, default=3, help="how many classes to list per image (default: 3)")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation: average each image's probabilities with its mirror "
                              "image's, as evaluate.tta does (twice the forward passes)")
    predict.set_defaults(run=_predict)

    export = commands.add_parser(
        "export", help="export to a SavedModel or TFLite, checked against the Keras model",
        description="Export a trained classifier for serving (TensorFlow SavedModel: raw pixels of any size in) "
                    "or for mobile (TFLite: raw pixels at the model's input size in). The class names are "
                    "written beside it. The export is compared with the Keras model on real images and put in "
                    "place only if a float export agrees on at least 99% of them (a swap of a near tie counts "
                    "as agreeing); int8 agreement is reported.",
    )
    export.add_argument("model", type=Path, nargs="?", default=DEFAULT_MODEL,
                        help=f"the .keras model to export (default: {DEFAULT_MODEL})")
    export.add_argument("--format", choices=FORMATS, required=True, help="what to export to")
    export.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="TFLite only: float16 halves the size; int8 quarters it, calibrated on the check "
                             "images (default: none)")
    export.add_argument("--out", type=Path, default=None,
                        help="where to write (default: beside the model, e.g. models/model_float16.tflite)")
    export.add_argument("--images", nargs="+", metavar="PATH", default=None,
                        help="images, folders or globs to check the export on (default: the pipeline's test split)")
    export.set_defaults(run=_export)

    exclude = commands.add_parser(
        "exclude", help="add the data-quality report's suspects to curation/exclude.csv",
        description="Add images from reports/data_quality to the exclude list that split applies (rows already "
                    "there stay; none is added twice). Then `dvc repro` re-runs from split. Leave the test "
                    "split out to compare accuracy on the same test images before and after.",
    )
    exclude.add_argument("--splits", default="train,val",
                         help="comma-separated splits whose images to add (default: train,val)")
    exclude.add_argument("--top", type=_positive, default=None,
                         help="the first N rows of label_issues.csv instead of the flagged suspects")
    exclude.add_argument("--outliers", action="store_true", help="add the flagged outliers too")
    exclude.add_argument("--report", type=Path, default=Path("reports/data_quality"),
                         help="the data-quality report folder (default: reports/data_quality)")
    exclude.add_argument("--file", type=Path, default=Path("curation/exclude.csv"),
                         help="the exclude list to add to (default: curation/exclude.csv, data.exclude's default)")
    exclude.set_defaults(run=_exclude)

    compare = commands.add_parser(
        "compare", help="one line per experiment: its scores and the params it changed",
        description="Every experiment run from the current commit (and the workspace), one line each: the test "
                    "accuracy, the head's alone on the cached features, the macro F1, and the params that differ "
                    "from the commit it was run from. Failed and queued experiments are marked.",
    )
    compare.add_argument("--repo", default=None, help="the repository (default: this one)")
    compare.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr and exit status 2."""
    from transfer.process import quiet_native_logs

    quiet_native_logs()  # before anything imports TensorFlow
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        summary = args.run(args)
    except UserError as error:
        print(one_line(error), file=sys.stderr)
        return 2
    if summary is not None:
        print(json.dumps(summary, indent=2))
    return 0
