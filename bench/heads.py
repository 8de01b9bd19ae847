"""Which head recipe to default to: head variants and the linear probe over many split seeds, in minutes.

    python bench/heads.py [--quick] [--seeds 10] [--backbones mobilenetv2_0.35,mobilenetv2_0.5]
                          [--image-size 224] [--out bench/results/heads.json]

The heads are what train-head trains (the stage's own ``build_head``, ``compile_with``, ``fit`` and ``seed``),
on the pipeline's own features: each photo of the data set goes through the extractor once, as given and
mirrored, and each split seed then splits them as the split stage does (``stratified_split``). So one
extraction serves every seed and variant, and ten seeds cost what one ``dvc repro`` costs. The head is scored on
the test split's features; beside it, the linear probe (logistic regression on standardised features, C chosen
on validation), and a ``head.search`` simulation: the variants' setting with the lowest validation
cross-entropy, per seed. What it cannot show is fine-tuning; ``bench/accuracy.py`` runs the whole pipeline.

Data: the shared 1,000-photo dev set with the shared MobileNetV2 weights. ``--quick``: generated shapes, random
weights, 32 px (what the test runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import DEV_ARCHIVE, SHARED_WEIGHTS, probe  # noqa: E402 (path first)
from tests.helpers import default_params_tree, make_shapes_dataset  # noqa: E402
from transfer.io import write_json  # noqa: E402

# Each variant: the features it trains on (single view, or each image averaged with its mirror) and the head
# params changed from the defaults.
VARIANTS: dict[str, tuple[bool, dict[str, object]]] = {
    "single_view_dropout_0.2": (False, {"dropout": 0.2}),
    "mirror_dropout_0.2": (True, {"dropout": 0.2}),
    "single_view_dropout_0.5": (False, {"dropout": 0.5}),
    "mirror_dropout_0.5": (True, {"dropout": 0.5}),
    "mirror_dropout_0.7": (True, {"dropout": 0.7}),
    "mirror_dropout_0.5_hidden_256": (True, {"dropout": 0.5, "hidden": (256,)}),
    "mirror_dropout_0.5_lr_3e-4": (True, {"dropout": 0.5, "lr": 3e-4}),
    "mirror_dropout_0.5_label_smoothing_0.1": (True, {"dropout": 0.5, "label_smoothing": 0.1}),
}


def extract(source: Path, backbone: str, weights: str | None, size: int | None) -> dict:
    """Every image's features, as given and mirrored, with the scan the split stage makes of the folder."""
    import numpy as np
    import tensorflow as tf

    from transfer.data.images import scan_images
    from transfer.data.pipeline import image_dataset
    from transfer.model.backbones import build_views
    from transfer.model.registry import resolve
    from transfer.schema import BackboneParams

    scan = scan_images(source)
    paths = [str(source / path) for path, _, _ in scan.images]
    choice = resolve(BackboneParams(backbone, weights or "none", (size, size) if size else None))
    _, single = build_views(choice, mirror=False)
    forward = tf.function(lambda images: single(images, training=False))
    plain, mirrored = [], []
    for batch in image_dataset(paths, choice.image_size, 32):
        plain.append(forward(batch).numpy())
        mirrored.append(forward(batch[:, :, ::-1]).numpy())
    # Stored as the cache stores them (float16), read as train-head reads them (float32).
    as_cached = [np.concatenate(views).astype(np.float16).astype(np.float32) for views in (plain, mirrored)]
    return {"scan": scan, "plain": as_cached[0], "mirror": (as_cached[0] + as_cached[1]) / 2}


def split_indices(scan, seed: int, val: float, test: float) -> dict:
    """The split stage's split of ``scan`` for ``seed``: {split: (row indices, labels)}."""
    import numpy as np

    from transfer.data.splits import stratified_split

    index = {path: i for i, (path, _, _) in enumerate(scan.images)}
    label = {name: i for i, name in enumerate(scan.classes)}
    splits = stratified_split(scan.images, scan.classes, val, test, seed)
    return {name: (np.array([index[path] for path, _ in rows]), np.array([label[cls] for _, cls in rows]))
            for name, rows in splits.items()}


def train_head(features, splits: dict, head, seed: int, classes: int) -> dict[str, float]:
    """train-head's recipe on these features: its model, compile, fit and seed; scored on val and test."""
    import numpy as np

    from transfer.model.heads import build_head
    from transfer.model.scoring import plain_scores
    from transfer.model.training import compile_with, fit, set_determinism

    set_determinism(seed)
    eye = np.eye(classes, dtype=np.float32)
    (train, train_y), (val, val_y), (test, test_y) = (splits[name] for name in ("train", "val", "test"))
    model = build_head(features.shape[1], classes, head.hidden, head.dropout, head.batchnorm)
    compile_with(model, head.training, len(train))
    with contextlib.redirect_stdout(io.StringIO()):
        fit(model, (features[train], eye[train_y]), (features[val], eye[val_y]), head.training, None,
            shuffle_seed=seed)

    validated, tested = plain_scores(model, features[val], val_y), plain_scores(model, features[test], test_y)
    return {"val_accuracy": validated["accuracy"], "val_cross_entropy": validated["loss"],
            "test_accuracy": tested["accuracy"]}


def probe_split(features, splits: dict) -> dict[str, float]:
    """:func:`bench.accuracy.probe` on rows of ``features`` (its C grid reaching one step lower)."""
    rows = [(features[splits[name][0]], splits[name][1]) for name in ("train", "val", "test")]
    return {"test_accuracy": probe(*rows, grid=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0))["test_accuracy"]}


def study(extracted: dict, seeds: int, defaults: dict) -> dict:
    """Every variant and both probes on every seed, then the mean test accuracy of each over the seeds."""
    from transfer.params import Params
    from transfer.schema import read_head

    base = read_head(Params(defaults))
    per_seed = []
    for seed in range(seeds):
        splits = split_indices(extracted["scan"], seed, defaults["split"]["val"], defaults["split"]["test"])
        classes = len(extracted["scan"].classes)
        row = {"probe_single_view": probe_split(extracted["plain"], splits),
               "probe_mirror": probe_split(extracted["mirror"], splits)}
        for name, (mirror, changes) in VARIANTS.items():
            training = {key: value for key, value in changes.items() if key in ("lr", "label_smoothing")}
            head = replace(base, **{key: value for key, value in changes.items() if key in ("dropout", "hidden")},
                           training=replace(base.training, **training))
            row[name] = train_head(extracted["mirror" if mirror else "plain"], splits, head, seed, classes)
        # head.search as train-head runs it, over these variants: the lowest validation cross-entropy is kept.
        chosen = min(VARIANTS, key=lambda name: row[name]["val_cross_entropy"])
        row["search_over_variants"] = {"test_accuracy": row[chosen]["test_accuracy"], "chosen": chosen}
        per_seed.append(row)
        print(f"seed {seed}: " + ", ".join(f"{name} {result['test_accuracy']:.4f}" for name, result in row.items()),
              flush=True)
    summary = {}
    for name in per_seed[0]:
        values = [row[name]["test_accuracy"] for row in per_seed]
        summary[name] = {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4),
                         "max": round(max(values), 4)}
    return {"per_seed": per_seed, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="generated shapes, random weights: a minute")
    parser.add_argument("--seeds", type=int, default=10, help="split seeds (default 10)")
    parser.add_argument("--backbones", default="mobilenetv2_0.35,mobilenetv2_0.5", help="comma-separated")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the side the photos run through the backbone at (default: the backbone's default, "
                             "as image_size: null gives it)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heads.json", help="where to write")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"error: --seeds {args.seeds}: expected 1 or more")
    if args.image_size is not None and args.image_size < 32:
        raise SystemExit(f"error: --image-size {args.image_size}: expected 32 or more")
    defaults = default_params_tree()
    results: dict[str, object] = {"quick": args.quick, "seeds": list(range(args.seeds)),
                                  "image_size": args.image_size, "variants": {
        name: {"mirror": mirror, **{key: list(value) if isinstance(value, tuple) else value
                                   for key, value in changes.items()}}
        for name, (mirror, changes) in VARIANTS.items()}, "cpu_count": os.cpu_count(), "backbones": {}}
    with tempfile.TemporaryDirectory(prefix="bench-heads-") as scratch:
        if args.quick:
            chosen = [("resnet50", make_shapes_dataset(Path(scratch) / "shapes", per_class=30, size=40), None, 32)]
        else:
            if not DEV_ARCHIVE.is_file():
                raise SystemExit(f"error: {DEV_ARCHIVE} is missing; run with --quick for generated images")
            import tarfile

            with tarfile.open(DEV_ARCHIVE) as archive:
                archive.extractall(scratch, filter="data")
            folders = [path.parent.parent for path in Path(scratch).rglob("*.jpg")]
            source = min(folders, key=lambda path: len(path.parts))
            names = [name.strip() for name in args.backbones.split(",") if name.strip()]
            unknown = [name for name in names if name not in SHARED_WEIGHTS]
            if unknown:
                raise SystemExit(f"error: no shared weights for {unknown}; choose from {', '.join(SHARED_WEIGHTS)}")
            chosen = [(name, source, str(SHARED_WEIGHTS[name]), args.image_size) for name in names]
        for backbone, source, weights, size in chosen:
            record = study(extract(source, backbone, weights, size), args.seeds, defaults)
            results["backbones"][backbone] = record
            write_json(args.out, results)
            print(f"\n{backbone}: test accuracy, mean [min, max] over {args.seeds} split seed(s)")
            for name, row in record["summary"].items():
                print(f"  {name:40} {row['mean']:.4f}  [{row['min']:.4f}, {row['max']:.4f}]")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
