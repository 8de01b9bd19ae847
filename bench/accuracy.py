"""How accurate the default pipeline is, over several split seeds, and what each lever of its recipe is worth.

    python bench/accuracy.py [--quick] [--seeds 3] [--backbones mobilenetv2_0.35,mobilenetv2_0.5]
                             [--levers all|none|name,...] [--lever-seeds N] [--out bench/results/accuracy.json]

For every backbone and seed it builds a fresh copy of the pipeline with default params (only the source,
the backbone, its weights and the seed set), runs the real ``dvc repro``, and reads what the stages wrote:
the head alone on the cached test features (``reports/head/metrics.json``), the fine-tuned model on the test
photos (``reports/metrics.json``), and the fine-tune epoch kept. Beside them, a linear probe (scikit-learn's
logistic regression, its C chosen on validation) on the same cached features. Then, on the first backbone
and the first ``--lever-seeds`` seeds (all by default), each lever of the fine-tuning recipe is switched to its
alternative with ``dvc exp run -S``, which re-runs only the stages that read it. Prints a table and writes the
whole record as JSON, after every seed, so a long run that is stopped keeps what it measured.

Data: the shared 1,000-photo dev set (../shared/assets/flower_photos_dev.tgz) with the shared MobileNetV2
weights. ``--quick``: generated shapes, random weights, 32 px, few epochs (minutes; what the test runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import ASSETS, make_pipeline_repo, make_shapes_dataset, run  # noqa: E402 (path first)
from transfer.io import write_json  # noqa: E402
from transfer.params import parse_params_text  # noqa: E402

DEV_ARCHIVE = ASSETS / "flower_photos_dev.tgz"
SHARED_WEIGHTS = {
    "mobilenetv2_0.35": ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    "mobilenetv2_0.5": ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5",
    "mobilenet_0.25": ASSETS / "weights" / "mobilenet_2_5_224_tf_no_top.h5",
}

# Each lever of the fine-tuning recipe and the alternative it is measured against: the default's params
# switched to these. A lever that the defaults leave off is measured by switching it on.
LEVERS: dict[str, dict[str, object]] = {
    "no_mirror_averaging": {"features.mirror": False},
    "head_dropout_0.2_not_0.5": {"head.dropout": 0.2},
    "unfreeze_all_not_top_20": {"fine_tune.unfreeze": "all"},
    "constant_lr_no_warmup_cosine": {"fine_tune.schedule": "constant", "fine_tune.warmup_epochs": 0},
    "adam_not_adamw": {"fine_tune.optimizer": "adam"},
    "no_label_smoothing": {"fine_tune.label_smoothing": 0.0},
    "plain_augment_flip_rotate_zoom": {"fine_tune.augment.zoom": 0.1, "fine_tune.augment.contrast": 0.0,
                                       "fine_tune.augment.brightness": 0.0},
    "lr_1e-4": {"fine_tune.lr": 0.0001},
    "5_epochs_not_15": {"fine_tune.epochs": 5},
    # Every fine-tune epoch through the whole backbone on the photos, with fresh random changes (the default
    # before the trunk cache reached fine-tuning).
    "whole_backbone_not_trunk_cache": {"fine_tune.trunk_cache": False},
    # Augmented copies of each training image in the trunk cache (features.trunk_views, default 0).
    "trunk_views_2": {"features.trunk_views": 2},
    "trunk_views_4": {"features.trunk_views": 4},
    "unfreeze_40_not_20": {"fine_tune.unfreeze": 40},
    "30_epochs_not_15": {"fine_tune.epochs": 30},
    "lr_1e-3": {"fine_tune.lr": 0.001},
    # Weight-space interpolation halfway back to the head (fine_tune.blend, default 1: the kept epoch as trained).
    "blend_0.5": {"fine_tune.blend": 0.5},
}

# The quick mode: a small generated task that still runs every stage. A random ResNet50 at 32 px still tells
# the shapes apart (a random MobileNet does not), and fine-tunes in seconds.
QUICK_BACKBONE = "resnet50"
QUICK_PARAMS = {"weights": "none", "image_size": 32, "features.batch_size": 8, "head.epochs": 30,
                "head.batch_size": 8, "fine_tune.epochs": 2, "fine_tune.batch_size": 8, "evaluate.batch_size": 16}


def probe(train: tuple, val: tuple, test: tuple, grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
          ) -> dict[str, float]:
    """The benches' linear probe: logistic regression on standardised features, its C chosen on validation
    from ``grid``, fitted on train, scored on test. Each split is (features, labels)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        model.fit(*train)
        score = model.score(*val) if len(val[1]) else 0.0
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    return {"test_accuracy": float(model.score(*test)), "val_accuracy": float(score), "C": c}


def probe_features(features: Path) -> dict[str, float]:
    """:func:`probe` on a cached feature folder's splits."""
    import numpy as np

    def split(name: str):
        return (np.load(features / f"{name}_features.npy").astype(np.float32),
                np.load(features / f"{name}_labels.npy"))

    return probe(split("train"), split("val"), split("test"))


def read_run(repo: Path) -> dict[str, object]:
    """What one execution of the pipeline left: test accuracies of head and fine-tuned model, and the kept epoch."""

    def figures(path: str) -> dict:
        return json.loads((repo / path).read_text())

    head, tuned, test = figures("reports/head/metrics.json"), figures("reports/fine_tune/metrics.json"), \
        figures("reports/metrics.json")
    return {
        "head_test_accuracy": head["test_accuracy"],
        "head_val_accuracy": head["val_accuracy"],
        "fine_tuned_test_accuracy": test["accuracy"],
        "fine_tuned_val_accuracy": tuned["val_accuracy"],
        "fine_tune_kept_epoch": tuned["best_epoch"],
        "fine_tune_epochs_run": tuned["epochs_run"],
        "fine_tune_seconds": figures("reports/timings/fine-tune.json")["seconds"],
        "test_images": test["images"],
    }


def settings(args) -> tuple[str, list[tuple[str, dict]]]:
    """The data set's name and, per backbone, the params that differ from the defaults."""
    if args.quick:
        source = make_shapes_dataset(args.work / "shapes", per_class=30, size=40)
        return "generated shapes 90", [(QUICK_BACKBONE, {"data.source": str(source), **QUICK_PARAMS})]
    if not DEV_ARCHIVE.is_file():
        raise SystemExit(f"error: {DEV_ARCHIVE} is missing; run with --quick for generated images")
    chosen = []
    for backbone in args.backbones:
        weights = SHARED_WEIGHTS.get(backbone)
        if weights is None or not weights.is_file():
            raise SystemExit(f"error: no shared weights for {backbone}; choose from {', '.join(SHARED_WEIGHTS)}")
        chosen.append((backbone, {"data.source": str(DEV_ARCHIVE), "weights": str(weights)}))
    return f"{DEV_ARCHIVE.name} (1,000 photos, 5 classes)", chosen


def measure(repo: Path, levers: list[str]) -> dict[str, object]:
    """The default run, its linear probe, then each lever switched, each from the committed defaults."""
    start = time.perf_counter()
    run(["dvc", "repro"], repo)
    record: dict[str, object] = {"default": read_run(repo), "repro_seconds": round(time.perf_counter() - start, 1)}
    record["linear_probe"] = probe_features(repo / "data/features")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "defaults"], repo)
    record["levers"] = {}
    for lever in levers:
        overrides = [f"{key}={json.dumps(value)}" for key, value in LEVERS[lever].items()]
        run(["dvc", "exp", "run", *[arg for override in overrides for arg in ("-S", override)]], repo)
        record["levers"][lever] = read_run(repo)
        # Back to the defaults: params, lock file and outputs as committed.
        run(["git", "checkout", "--", "."], repo)
        run(["dvc", "checkout", "--force"], repo)
    return record


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def summarise(per_seed: dict[int, dict]) -> dict[str, object]:
    """Mean and spread over seeds of every accuracy, and each lever's effect on the fine-tuned accuracy (over
    the seeds that measured levers)."""
    runs = list(per_seed.values())
    table: dict[str, object] = {
        "linear_probe": summary([r["linear_probe"]["test_accuracy"] for r in runs]),
        "head": summary([r["default"]["head_test_accuracy"] for r in runs]),
        "fine_tuned": summary([r["default"]["fine_tuned_test_accuracy"] for r in runs]),
        # Within half a photo: the head's figure is Keras' float32 mean, evaluate's a float64 count ratio.
        "fine_tuned_at_least_head_every_seed": all(
            r["default"]["fine_tuned_test_accuracy"] >= r["default"]["head_test_accuracy"]
            - 0.5 / r["default"]["test_images"] for r in runs),
    }
    levers = {}
    for lever in runs[0]["levers"]:
        measured = [r for r in runs if lever in r["levers"]]
        switched = [r["levers"][lever]["fine_tuned_test_accuracy"] for r in measured]
        deltas = [r["default"]["fine_tuned_test_accuracy"] - s for r, s in zip(measured, switched, strict=True)]
        heads = [r["levers"][lever]["head_test_accuracy"] for r in measured]
        head_deltas = [r["default"]["head_test_accuracy"] - h for r, h in zip(measured, heads, strict=True)]
        levers[lever] = {"seeds": len(measured), "fine_tuned": summary(switched),
                         "default_minus_switched": summary(deltas), "head": summary(heads),
                         "head_default_minus_switched": summary(head_deltas)}
    table["levers"] = levers
    return table


def print_table(results: dict) -> None:
    print(f"\n{results['dataset']}: test accuracy, mean over seeds {results['seeds']} [min, max]")
    for backbone, record in results["backbones"].items():
        table = record["summary"]
        print(f"\n{backbone}")
        for name in ("linear_probe", "head", "fine_tuned"):
            row = table[name]
            print(f"  {name:34} {row['mean']:.4f}  [{row['min']:.4f}, {row['max']:.4f}]")
        print(f"  fine-tuned >= head on every seed:  {table['fine_tuned_at_least_head_every_seed']}")
        for lever, row in table["levers"].items():
            delta = row["default_minus_switched"]
            print(f"  lever {lever:28} {row['fine_tuned']['mean']:.4f}  (defaults {delta['mean']:+.4f}, "
                  f"per seed [{delta['min']:+.4f}, {delta['max']:+.4f}], {row['seeds']} seed(s)); "
                  f"head {row['head']['mean']:.4f} (defaults {row['head_default_minus_switched']['mean']:+.4f})")


def parse_sets(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` options as params: each value read as DVC and the stages read params.yaml."""
    base = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE")
        base[key.strip()] = parse_params_text(value, f"--set {item}")
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="generated images, random weights: minutes")
    parser.add_argument("--seeds", type=int, default=3, help="split seeds per backbone (default 3)")
    parser.add_argument("--backbones", default="mobilenetv2_0.35,mobilenetv2_0.5",
                        help="comma-separated; the levers are measured on the first")
    parser.add_argument("--levers", default="all", help="all, none, or comma-separated names of " + ", ".join(LEVERS))
    parser.add_argument("--lever-seeds", type=int, default=None,
                        help="measure the levers on the first N seeds only (default: every seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param for every run, over the defaults (YAML value; repeatable): to measure a "
                             "candidate default and its levers before committing it")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json", help="where to write")
    args = parser.parse_args(argv)
    base = parse_sets(args.set)
    args.backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
    named = {"all": list(LEVERS), "none": []}
    levers = named[args.levers] if args.levers in named else [name.strip() for name in args.levers.split(",")]
    unknown = [name for name in levers if name not in LEVERS]
    if unknown or args.seeds < 1:
        raise SystemExit(f"error: --levers {unknown} unknown; expected all, none or some of {', '.join(LEVERS)}"
                         if unknown else f"error: --seeds {args.seeds}: expected 1 or more")
    lever_seeds = args.seeds if args.lever_seeds is None else args.lever_seeds
    results: dict[str, object] = {"quick": args.quick, "seeds": list(range(args.seeds)), "set": base, "levers": LEVERS,
                                  "lever_seeds": list(range(min(lever_seeds, args.seeds))),
                                  "cpu_count": os.cpu_count(), "backbones": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as scratch:
        args.work = Path(scratch)
        results["dataset"], chosen = settings(args)
        for index, (backbone, overrides) in enumerate(chosen):
            per_seed = {}
            for seed in range(args.seeds):
                repo = make_pipeline_repo(args.work / backbone / f"seed{seed}",
                                          {**base, **overrides, "backbone": backbone, "seed": seed})
                per_seed[seed] = measure(repo, levers if index == 0 and seed < lever_seeds else [])
                print(f"{backbone} seed {seed}: {json.dumps(per_seed[seed]['default'])}", flush=True)
                results["backbones"][backbone] = {"params": overrides, "per_seed": per_seed,
                                                  "summary": summarise(per_seed)}
                write_json(args.out, results)
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
