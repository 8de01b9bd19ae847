"""Which fine-tune epoch to keep: each rule's choice, scored on test, from every epoch's probabilities.

    python bench/epochs.py [--quick] [--seeds 3] [--backbones mobilenetv2_0.35,mobilenetv2_0.5]
                           [--set KEY=VALUE] [--probabilities DIR] [--out bench/results/epochs.json]

For every backbone and seed it builds a fresh copy of the pipeline with default params (only the source, the
backbone, its weights and the seed set), runs the real ``dvc repro train-head``, then the fine-tune stage's own
``main()`` in a child process, with the stage's scoring wrapped: each time the stage scores validation (epoch 0,
then after every epoch) the classifier it scores also gives its probabilities for the validation and the test
photos. From those, each keeping rule picks an epoch on validation alone, and the test split says what the pick
is worth. The stage's rule recomputed here must pick the epoch the stage kept, and the validation loss the
stage logged must match the one recomputed (within 1e-4): the bench checks both, so its figures are the stage's.

The rules: the stage's (the lowest validation loss with ``fine_tune.label_smoothing``, epoch 0 included),
plain cross-entropy, cross-entropy after a temperature fitted per epoch on validation (it removes the
difference in confidence between a head trained without label smoothing and epochs trained with it), and
validation accuracy (cross-entropy breaks ties). Beside them: the head (epoch 0), the last epoch, the best
epoch on test in hindsight, which no rule can see, and the head's and the kept epoch's test probabilities
averaged (an ensemble of the two: what a model holding both tops, the ImageNet one under the head and the
fine-tuned one, would answer).

Data: the shared 1,000-photo dev set (../shared/assets/flower_photos_dev.tgz) with the shared MobileNetV2
weights. ``--quick``: generated shapes, random weights, 32 px, two epochs (what the test runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import parse_sets, settings  # noqa: E402 (path first)
from tests.helpers import make_pipeline_repo, run  # noqa: E402
from transfer.io import read_csv, write_json  # noqa: E402

CAPTURED = "epoch_probabilities.npz"
# Params under which the stage scores validation once per epoch with a classifier whose weights are the photo
# classifier's, which is what the capture wraps: mirror averaging on (the classifier, or its trunk-cache twin,
# scores in place of the trained single view), no blend (it scores once more). Set on every run. Both fine-tune
# modes are followed: from the trunk cache (the default) the stage scores validation on the cached trunk outputs,
# and the test photos go through the photo classifier, which shares those weights.
NEEDED = {"features.mirror": True, "fine_tune.blend": 1.0}
# The classifier ends in a softmax, so Keras computes its loss from the logits, never clipping a probability at
# its epsilon (1e-7): with label smoothing every class's log-probability counts, a head's far smaller ones too.
# Only a probability that float32 rounds to zero is clipped here.
SMALLEST = float(np.finfo(np.float32).tiny)


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> float:
    """The categorical cross-entropy Keras reports for a softmax classifier, against integer labels smoothed by
    ``smoothing``."""
    classes = probabilities.shape[1]
    targets = np.full(probabilities.shape, smoothing / classes)
    targets[np.arange(len(labels)), labels] += 1.0 - smoothing
    logs = np.log(np.clip(probabilities.astype(np.float64), SMALLEST, 1.0))
    return float(-(targets * logs).sum(axis=1).mean())


def calibrated_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy after the temperature that minimises it (transfer.model.calibration's fit, as evaluate fits it)."""
    from transfer.model.calibration import fit_temperature, scale

    return cross_entropy(scale(probabilities, fit_temperature(probabilities, labels)), labels)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def epoch_table(captured: dict, smoothing: float) -> list[dict[str, float]]:
    """Every epoch's validation figures (what a rule may look at) and test figures (what the pick is worth)."""
    val, test, val_y, test_y = (captured[key] for key in ("val", "test", "val_y", "test_y"))
    return [{"epoch": epoch,
             "val_loss_smoothed": cross_entropy(val[epoch], val_y, smoothing),
             "val_cross_entropy": cross_entropy(val[epoch], val_y),
             "val_calibrated_cross_entropy": calibrated_cross_entropy(val[epoch], val_y),
             "val_accuracy": accuracy(val[epoch], val_y),
             "test_accuracy": accuracy(test[epoch], test_y),
             "test_cross_entropy": cross_entropy(test[epoch], test_y)}
            for epoch in range(len(val))]


# Each rule: the key it minimises over the epochs (the first of equal values wins, as in the stage).
RULES = {
    "smoothed_validation_loss": lambda row: row["val_loss_smoothed"],
    "validation_cross_entropy": lambda row: row["val_cross_entropy"],
    "calibrated_cross_entropy": lambda row: row["val_calibrated_cross_entropy"],
    "validation_accuracy": lambda row: (-row["val_accuracy"], row["val_cross_entropy"]),
}
STAGE_RULE = "smoothed_validation_loss"


def picks(table: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """The epoch each rule keeps and its test accuracy, with the head, the last epoch and the hindsight best."""
    chosen = {name: min(table, key=key)["epoch"] for name, key in RULES.items()}
    chosen["head"] = 0
    chosen["last_epoch"] = table[-1]["epoch"]
    chosen["best_on_test_in_hindsight"] = max(table, key=lambda row: row["test_accuracy"])["epoch"]
    return {name: {"epoch": epoch, "test_accuracy": table[epoch]["test_accuracy"]} for name, epoch in chosen.items()}


def averaged_with_head(captured: dict, epoch: int) -> dict[str, float]:
    """The test accuracy of the head's (epoch 0) and ``epoch``'s probabilities averaged, photo by photo."""
    return {"epoch": epoch, "test_accuracy": accuracy((captured["test"][0] + captured["test"][epoch]) / 2,
                                                      captured["test_y"])}


def capture(repo: Path) -> None:
    """In ``repo`` (train-head done): run the fine-tune stage, keeping each scored epoch's probabilities."""
    import importlib.util

    os.chdir(repo)
    from transfer.data.pipeline import image_dataset
    from transfer.data.splits import read_classes, read_split
    from transfer.layout import RAW, SPLITS
    from transfer.model import scoring, training
    from transfer.model.registry import resolve
    from transfer.params import Params
    from transfer.schema import read_backbone

    params = Params.load()
    choice = resolve(read_backbone(params), params.source)
    classes = read_classes(SPLITS)
    splits = {name: read_split(SPLITS, name, RAW, classes) for name in ("val", "test")}
    photos = {"test": image_dataset(splits["test"][0], choice.image_size, 32)}
    kept: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    stage_score = scoring.score
    assembled: list = []  # the stage's classifiers in the order it assembles them: the photo classifier first

    def score(model, data, batch_size, strategy=None):
        # Validation as the stage scores it (photos, or the trunk cache's outputs of the same photos); test
        # through the photo classifier, which holds the same weights as whichever model the stage scores.
        kept["val"].append(np.asarray(model.predict(data, verbose=0)))
        kept["test"].append(np.asarray(assembled[0].predict(photos["test"], verbose=0)))
        return stage_score(model, data, batch_size, strategy)

    spec = importlib.util.spec_from_file_location("fine_tune_stage", repo / "stages" / "fine_tune.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage_assemble = stage.assemble_classifier

    def assemble(*args, **kwargs):
        assembled.append(stage_assemble(*args, **kwargs))
        return assembled[-1]

    stage.assemble_classifier = assemble
    training.score = stage.score = score  # the stage's epoch 0, and its per-epoch scorer (in training.fit)
    stage.main()
    np.savez(repo / CAPTURED, val=np.stack(kept["val"]), test=np.stack(kept["test"]),
             val_y=splits["val"][1], test_y=splits["test"][1])


def measure(repo: Path, probabilities: Path | None, name: str) -> dict[str, object]:
    """train-head by DVC, the fine-tune stage captured, and every rule's pick checked against the stage."""
    run(["dvc", "repro", "train-head"], repo)
    run([sys.executable, str(Path(__file__).resolve()), "--capture", str(repo)], ROOT)
    captured = dict(np.load(repo / CAPTURED))
    tuned = json.loads((repo / "reports/fine_tune/metrics.json").read_text())
    smoothing = float(yaml.safe_load((repo / "params.yaml").read_text())["fine_tune"]["label_smoothing"])
    table = epoch_table(captured, smoothing)
    if len(table) != tuned["epochs_run"] + 1:
        raise SystemExit(f"error: captured {len(table)} scorings for {tuned['epochs_run']} epochs and epoch 0")
    logged = [float(row["val_loss"]) for row in read_csv(repo / "reports/fine_tune/history.csv")]
    gap = max(abs(a - row["val_loss_smoothed"]) for a, row in zip(logged, table, strict=True))
    chosen = picks(table)
    if gap > 1e-4 or chosen[STAGE_RULE]["epoch"] != tuned["best_epoch"]:
        raise SystemExit(f"error: the capture is not the stage's: validation loss off by {gap:.2g}, or epoch "
                         f"{chosen[STAGE_RULE]['epoch']} against the stage's {tuned['best_epoch']}")
    chosen["head_and_kept_averaged"] = averaged_with_head(captured, tuned["best_epoch"])
    if probabilities is not None:
        probabilities.mkdir(parents=True, exist_ok=True)
        np.savez(probabilities / f"{name}.npz", **captured)
    return {"epochs": table, "picks": chosen, "stage_kept_epoch": tuned["best_epoch"],
            "largest_val_loss_gap_to_the_stage": gap, "label_smoothing": smoothing}


def summarise(per_seed: dict[int, dict]) -> dict[str, dict[str, object]]:
    """Per pick: mean, min and max test accuracy over the seeds, and the epochs picked."""
    summary = {}
    for name in next(iter(per_seed.values()))["picks"]:
        values = [record["picks"][name]["test_accuracy"] for record in per_seed.values()]
        summary[name] = {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4),
                         "max": round(max(values), 4),
                         "epochs": [record["picks"][name]["epoch"] for record in per_seed.values()]}
    return summary


def print_table(results: dict) -> None:
    print(f"\n{results['dataset']}: test accuracy of the epoch each rule keeps, mean over seeds "
          f"{results['seeds']} [min, max] (epochs kept)")
    for backbone, record in results["backbones"].items():
        print(f"\n{backbone}")
        for name, row in record["summary"].items():
            print(f"  {name:28} {row['mean']:.4f}  [{row['min']:.4f}, {row['max']:.4f}]  {row['epochs']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="generated images, random weights: a minute or two")
    parser.add_argument("--seeds", type=int, default=3, help="split seeds per backbone (default 3)")
    parser.add_argument("--backbones", default="mobilenetv2_0.35,mobilenetv2_0.5", help="comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param for every run, over the defaults (YAML value; repeatable)")
    parser.add_argument("--probabilities", type=Path, default=None,
                        help="a folder to keep each run's per-epoch probabilities in (<backbone>_seed<N>.npz)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "epochs.json", help="where to write")
    parser.add_argument("--capture", type=Path, help=argparse.SUPPRESS)  # the child process: one stage run
    args = parser.parse_args(argv)
    if args.capture is not None:
        capture(args.capture)
        return 0
    base = parse_sets(args.set)
    against = {key: base[key] for key in NEEDED if key in base and base[key] != NEEDED[key]}
    if against or args.seeds < 1:
        raise SystemExit(f"error: --set {against}: the capture needs {NEEDED}" if against
                         else f"error: --seeds {args.seeds}: expected 1 or more")
    args.backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
    results: dict[str, object] = {"quick": args.quick, "seeds": list(range(args.seeds)), "set": base,
                                  "rules": list(RULES), "cpu_count": os.cpu_count(), "backbones": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-epochs-") as scratch:
        args.work = Path(scratch)
        results["dataset"], chosen = settings(args)
        for backbone, overrides in chosen:
            per_seed = {}
            for seed in range(args.seeds):
                repo = make_pipeline_repo(args.work / backbone / f"seed{seed}",
                                          {**NEEDED, **base, **overrides, "backbone": backbone, "seed": seed})
                per_seed[seed] = measure(repo, args.probabilities, f"{backbone}_seed{seed}")
                print(f"{backbone} seed {seed}: {json.dumps(per_seed[seed]['picks'])}", flush=True)
                results["backbones"][backbone] = {"params": overrides, "per_seed": per_seed,
                                                  "summary": summarise(per_seed)}
                write_json(args.out, results)
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
