"""What ``fine_tune.blend`` does to test accuracy: the fine-tuned weights moved back toward the head's start.

    python bench/blend.py [--quick] [--seeds 3] [--backbones mobilenetv2_0.35,mobilenetv2_0.5]
                          [--set key=value ...] [--out bench/results/blend.json]

For every backbone and seed it builds a fresh copy of the pipeline with default params (the source, the
backbone, its weights and the seed set, plus any ``--set``), runs the real ``dvc repro`` with
``fine_tune.epochs: 0`` (the saved model is then the head on the backbone: the start every fine-tune leaves
from), keeps that model, and fine-tunes with the default epochs through ``dvc exp run``. Then, for each blend
of a grid, it puts the saved weights that far from the start toward the fine-tuned ones with the fine-tune
stage's own ``blend_weights`` (one fine-tune serves every blend, which re-running the stage per value would
not), and scores the validation and test photos as evaluate does. Reports accuracy and cross-entropy (without
label smoothing) per blend, and the blend that the lowest validation cross-entropy would choose. Prints a table
and writes the whole record as JSON after every seed.

Data: the shared 1,000-photo dev set with the shared MobileNetV2 weights. ``--quick``: generated shapes,
random weights, 32 px (minutes; what the test runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import (  # noqa: E402 (the repository root goes on the path first)
    QUICK_PARAMS,
    SHARED_WEIGHTS,
    parse_sets,
    settings,
)
from tests.helpers import default_params_tree, make_pipeline_repo, run  # noqa: E402
from transfer.io import write_json  # noqa: E402
from transfer.process import quiet_native_logs  # noqa: E402

BLENDS = (0.0, 0.3, 0.5, 0.7, 1.0)
START_MODEL = "start.keras"


def scores(repo: Path, blends: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Validation and test accuracy and cross-entropy of the saved model blended back toward the start."""
    import keras
    import numpy as np

    from transfer.data.splits import read_classes, read_split
    from transfer.model.classifier import load_model
    from transfer.model.training import blend_weights
    from transfer.serve.predict import class_probabilities

    model, classes = load_model(repo / "models/model.keras")
    assert list(classes) == read_classes(repo / "data/splits"), "the model was trained on the split's classes"
    start = keras.saving.load_model(repo / START_MODEL, compile=False)
    start_weights = [np.array(variable.numpy()) for variable in start.weights]
    tuned_weights = [np.array(variable.numpy()) for variable in model.weights]
    splits = {name: read_split(repo / "data/splits", name, repo / "data/raw", list(classes))
              for name in ("val", "test")}
    rows = {}
    for blend in blends:
        for variable, value in zip(model.weights, tuned_weights, strict=True):
            variable.assign(value)
        blend_weights(model.weights, start_weights, blend)
        row = {}
        for name, (paths, labels) in splits.items():
            probabilities = class_probabilities(model, paths, 32)
            picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
            row[f"{name}_accuracy"] = round(float((probabilities.argmax(1) == labels).mean()), 4)
            row[f"{name}_cross_entropy"] = round(float(-np.log(picked).mean()), 4)
        rows[str(blend)] = row
    return rows


def measure(repo: Path, epochs: int, blends: tuple[float, ...]) -> dict[str, object]:
    run(["dvc", "repro"], repo)
    shutil.copy(repo / "models/model.keras", repo / START_MODEL)
    run(["dvc", "exp", "run", "-S", f"fine_tune.epochs={epochs}"], repo)
    rows = scores(repo, blends)
    tuned = json.loads((repo / "reports/fine_tune/metrics.json").read_text())
    chosen = min(rows, key=lambda blend: rows[blend]["val_cross_entropy"])
    return {"blends": rows, "kept_epoch": tuned["best_epoch"], "chosen_on_validation": chosen,
            "evaluate_accuracy": json.loads((repo / "reports/metrics.json").read_text())["accuracy"]}


def summarise(per_seed: dict) -> dict[str, object]:
    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values)}

    runs = list(per_seed.values())
    table = {blend: {"test_accuracy": spread([r["blends"][blend]["test_accuracy"] for r in runs]),
                     "test_cross_entropy": spread([r["blends"][blend]["test_cross_entropy"] for r in runs])}
             for blend in runs[0]["blends"]}
    table["chosen_on_validation"] = {
        "test_accuracy": spread([r["blends"][r["chosen_on_validation"]]["test_accuracy"] for r in runs]),
        "test_cross_entropy": spread([r["blends"][r["chosen_on_validation"]]["test_cross_entropy"] for r in runs]),
        "chosen": [r["chosen_on_validation"] for r in runs],
    }
    return table


def print_table(results: dict) -> None:
    for backbone, record in results["backbones"].items():
        print(f"\n{backbone}, seeds {results['seeds']}: test accuracy mean [min, max], test cross-entropy mean")
        for name, row in record["summary"].items():
            accuracy, entropy = row["test_accuracy"], row["test_cross_entropy"]
            label = f"blend {name}" if name != "chosen_on_validation" else f"chosen on validation {row['chosen']}"
            print(f"  {label:40} {accuracy['mean']:.4f} [{accuracy['min']:.4f}, {accuracy['max']:.4f}]  "
                  f"{entropy['mean']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="generated shapes, random weights: minutes")
    parser.add_argument("--seeds", type=int, default=3, help="split seeds 0..N-1 (default 3)")
    parser.add_argument("--backbones", default="mobilenetv2_0.35,mobilenetv2_0.5",
                        help="comma-separated, from " + ", ".join(SHARED_WEIGHTS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param under every run, as dvc exp run -S writes it (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "blend.json", help="where to write")
    args = parser.parse_args(argv)
    quiet_native_logs()  # this process imports TensorFlow to score the blends: the stages' filter on its chatter
    base = parse_sets(args.set)
    epochs = base.pop("fine_tune.epochs", None) or default_params_tree()["fine_tune"]["epochs"]
    if args.quick:
        epochs = QUICK_PARAMS["fine_tune.epochs"]
    args.backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
    results: dict[str, object] = {"quick": args.quick, "seeds": list(range(args.seeds)), "set": base,
                                  "blends": list(BLENDS), "backbones": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-blend-") as scratch:
        args.work = Path(scratch)
        results["dataset"], chosen = settings(args)
        for backbone, overrides in chosen:
            per_seed = {}
            for seed in range(args.seeds):
                repo = make_pipeline_repo(args.work / backbone / f"seed{seed}", {
                    **overrides, **base, "backbone": backbone, "seed": seed, "fine_tune.epochs": 0})
                per_seed[seed] = measure(repo, epochs, BLENDS)
                shutil.rmtree(repo)
                print(f"{backbone} seed {seed}: {json.dumps(per_seed[seed])}", flush=True)
                results["backbones"][backbone] = {"params": overrides, "per_seed": per_seed,
                                                  "summary": summarise(per_seed)}
                write_json(args.out, results)
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
