"""Does the data-quality report find what is planted, and what do its fixes do to the measured accuracy?

    python bench/data_quality.py [--quick] [--seed 0] [--curation-seeds 3] [--out bench/results/data_quality.json]

Runs the real pipeline (``dvc repro``, and for the planted leak the stage scripts themselves) in fresh copies:

1. **Planted label errors.** A seeded 5% of the photos are moved into another class's folder, then a full
   ``dvc repro`` (fine-tuning included). Reported: how many of the moved photos are among the first 2x-as-many
   rows of ``reports/data_quality/label_issues.csv``, among the flagged suspects, and the report's seconds
   against the whole execution's.
2. **Curation.** On the photos as they are (``fine_tune.epochs: 0``, so each run takes a minute), for each of
   ``--curation-seeds`` split seeds, the flagged suspects go into ``curation/exclude.csv``: first only those
   in train and val (the test images stay the same), then all of them (test images dropped too, which
   flatters the score). Each is a ``dvc repro`` that re-runs from split. Reported: test accuracy before and
   after, on the same images, per seed and their mean.
3. **Planted leak.** 10 seeded test photos are resized to 80% and re-encoded as JPEG at quality 70 into the
   training split (``data/raw`` and ``data/splits/train.csv``), and the stages from extract-features on run
   again (in a copy of the first seed's pipeline, taken before its curation). Reported: how many of the 10 the
   report pairs with their copy, and the test accuracy (``fine_tune.epochs: 0``: the head on the backbone)
   with and without the leaked images.

Prints a table and writes the record as JSON. Data: the shared 1,000-photo dev set with the shared
MobileNetV2 0.35 weights. ``--quick``: generated shapes, random weights, 32 px (minutes; what the test runs).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.accuracy import DEV_ARCHIVE, QUICK_BACKBONE, QUICK_PARAMS, SHARED_WEIGHTS  # noqa: E402
from tests.helpers import make_pipeline_repo, make_shapes_dataset, run  # noqa: E402
from transfer.data.quality_report import leaked_test_files  # noqa: E402
from transfer.io import read_csv, read_json, write_json  # noqa: E402
from transfer.report.tracking import ARTIFACTS_FOLDER, STORE_FILE  # noqa: E402

FLIP_FRACTION = 0.05
LEAKED = 10
DEV_BACKBONE = "mobilenetv2_0.35"


def photos(args, work: Path) -> Path:
    """A folder of class folders: the dev photos, or generated shapes."""
    if args.quick:
        # 96 px: an 80% re-encoded copy of a 48 px shape loses too much to be paired reliably (bench/duplicates.py,
        # its small set); the images still go through the backbone at QUICK_PARAMS' 32 px.
        return make_shapes_dataset(work / "shapes", per_class=30, size=96, seed=args.seed)
    with tarfile.open(DEV_ARCHIVE) as archive:
        archive.extractall(work / "dev", filter="data")
    return next(path.parent for path in sorted((work / "dev").rglob("*")) if path.is_file()).parent


def base_params(args, source: Path, seed: int) -> dict:
    if args.quick:
        return {**QUICK_PARAMS, "backbone": QUICK_BACKBONE, "data.source": str(source), "seed": seed}
    return {"backbone": DEV_BACKBONE, "weights": str(SHARED_WEIGHTS[DEV_BACKBONE]), "data.source": str(source),
            "seed": seed}


def flip_labels(source: Path, target: Path, seed: int) -> set[str]:
    """Copy ``source`` to ``target`` and move a seeded FLIP_FRACTION of its photos into another class's folder.

    Returns the moved photos' new paths, relative to the folder (as the report names them).
    """
    shutil.copytree(source, target)
    classes = sorted(path.name for path in target.iterdir() if path.is_dir())
    files = sorted(path for path in target.rglob("*") if path.is_file())
    rng = np.random.default_rng(seed)
    moved = set()
    for index in rng.choice(len(files), round(FLIP_FRACTION * len(files)), replace=False):
        path = files[index]
        others = [name for name in classes if name != path.parent.name]
        destination = target / others[rng.integers(len(others))] / path.name
        path.rename(destination)
        moved.add(destination.relative_to(target).as_posix())
    return moved


def seconds(repo: Path) -> dict[str, float]:
    return {path.stem: read_json(path)["seconds"] for path in sorted((repo / "reports/timings").glob("*.json"))}


def planted_label_errors(args, source: Path, work: Path) -> dict:
    flipped = flip_labels(source, work / "flipped", args.seed)
    repo = make_pipeline_repo(work / "flipped_repo", base_params(args, work / "flipped", args.seed))
    run(["dvc", "repro"], repo)
    ranked = read_csv(repo / "reports/data_quality/label_issues.csv")
    metrics = read_json(repo / "reports/data_quality/metrics.json")
    first = {row["file"] for row in ranked[: 2 * len(flipped)]}
    flagged = {row["file"] for row in ranked if row["suspect"] == "1"}
    stages = seconds(repo)
    report_seconds = read_json(repo / "reports/timings/extract-features.json")["data_quality_seconds"]
    return {
        "photos": metrics["images"],
        "flipped": len(flipped),
        "found_in_first_2x": len(flipped & first),
        "recall_first_2x": round(len(flipped & first) / len(flipped), 4),
        "flagged_suspects": len(flagged),
        "flipped_among_flagged": len(flipped & flagged),
        "ranked_rows": len(ranked),
        "report_seconds": report_seconds,
        "execution_seconds": round(sum(stages.values()), 2),
        "report_share_of_execution": round(report_seconds / sum(stages.values()), 4),
        "stage_seconds": stages,
    }


def test_predictions(repo: Path) -> dict[str, bool]:
    """{test file: predicted right} from evaluate's predictions CSV."""
    rows = read_csv(repo / "reports/evaluate/predictions.csv")
    return {row["path"]: row["label"] == row["predicted"] for row in rows}


def accuracy(right: dict[str, bool], files=None) -> float:
    chosen = [right[name] for name in (files if files is not None else right)]
    return round(sum(chosen) / len(chosen), 4)


def exclude(repo: Path, files: list[str]) -> None:
    (repo / "curation/exclude.csv").write_text("file\n" + "".join(f"{name}\n" for name in files))
    run(["dvc", "repro"], repo)


def curation(repo: Path) -> dict:
    """Exclude the flagged suspects from train and val, then from every split; accuracy on the same images."""
    baseline = test_predictions(repo)
    suspects = [row for row in read_csv(repo / "reports/data_quality/label_issues.csv") if row["suspect"] == "1"]
    training = [row["file"] for row in suspects if row["split"] != "test"]
    in_test = [row["file"] for row in suspects if row["split"] == "test"]
    exclude(repo, training)
    trained_clean = test_predictions(repo)
    assert set(trained_clean) == set(baseline), "the same test images before and after"
    exclude(repo, training + in_test)
    both = test_predictions(repo)
    remaining = sorted(both)
    return {
        "suspects": len(suspects),
        "suspects_in_train_val": len(training),
        "suspects_in_test": len(in_test),
        "test_images": len(baseline),
        "baseline_accuracy": accuracy(baseline),
        "dropped_from_train_val_accuracy": accuracy(trained_clean),
        "dropped_everywhere_accuracy": accuracy(both),
        "dropped_everywhere_test_images": len(both),
        "baseline_accuracy_on_the_same_remaining_images": accuracy(baseline, remaining),
        "dropped_from_train_val_accuracy_on_the_same_remaining_images": accuracy(trained_clean, remaining),
    }


def reencoded_copy(original: Path, copy: Path) -> None:
    """What a leak usually looks like: the photo resized to 80% and saved again as a JPEG at quality 70."""
    from PIL import Image, ImageOps

    with Image.open(original) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image = image.resize((max(8, int(image.width * 0.8)), max(8, int(image.height * 0.8))))
        image.save(copy, "JPEG", quality=70)


def planted_leak(repo: Path, seed: int) -> dict:
    """Copy LEAKED test photos, resized and re-encoded, into train; re-run the stages from extract-features on."""
    before = read_json(repo / "reports/metrics.json")
    tests = read_csv(repo / "data/splits/test.csv")
    rng = np.random.default_rng(seed)
    chosen = [tests[index] for index in sorted(rng.choice(len(tests), min(LEAKED, len(tests)), replace=False))]
    with (repo / "data/splits/train.csv").open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for row in chosen:
            copy = Path(row["path"]).with_name(f"leaked_{Path(row['path']).stem}.jpg").as_posix()
            reencoded_copy(repo / "data/raw" / row["path"], repo / "data/raw" / copy)
            writer.writerow([copy, row["label"]])
    for stage in ("extract_features", "train_head", "fine_tune", "evaluate"):
        run([sys.executable, f"stages/{stage}.py"], repo)
    after = read_json(repo / "reports/metrics.json")
    leaked = leaked_test_files(repo / "reports/data_quality/near_duplicates.csv")
    return {
        "planted": len(chosen),
        "found": len(leaked & {row["path"] for row in chosen}),
        "leaked_test_images_reported": after["leaked_test_images"],
        "test_accuracy_before_leak": round(before["accuracy"], 4),
        "test_accuracy_with_leak": round(after["accuracy"], 4),
        "test_accuracy_with_leak_without_leaked_images": after["accuracy_without_leaked"],
    }


def shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def mean(runs: list[dict], key: str) -> float:
    return round(sum(run[key] for run in runs) / len(runs), 4)


def print_table(results: dict) -> None:
    flips, leak = results["label_errors"], results["leak"]
    print(f"\nplanted label errors: {flips['found_in_first_2x']} of {flips['flipped']} flipped photos in the first "
          f"{2 * flips['flipped']} rows ({flips['recall_first_2x']:.0%}); {flips['flipped_among_flagged']} among the "
          f"{flips['flagged_suspects']} flagged suspects")
    print(f"report: {flips['report_seconds']:.1f} s of a {flips['execution_seconds']:.1f} s dvc repro "
          f"({flips['report_share_of_execution']:.1%})")
    for seed, cure in results["curation"].items():
        print(f"curation, split seed {seed} ({cure['suspects']} suspects: {cure['suspects_in_train_val']} train/val, "
              f"{cure['suspects_in_test']} test), test accuracy:")
        print(f"  baseline                         {cure['baseline_accuracy']:.4f} on {cure['test_images']} images")
        print(f"  suspects dropped from train/val  {cure['dropped_from_train_val_accuracy']:.4f} on the same images")
        print(f"  suspects dropped everywhere      {cure['dropped_everywhere_accuracy']:.4f} on "
              f"{cure['dropped_everywhere_test_images']} images (baseline on those: "
              f"{cure['baseline_accuracy_on_the_same_remaining_images']:.4f})")
    runs = list(results["curation"].values())
    print(f"curation, mean of {len(runs)} seed(s): baseline {mean(runs, 'baseline_accuracy'):.4f}, suspects dropped "
          f"from train/val {mean(runs, 'dropped_from_train_val_accuracy'):.4f} (same images); dropped everywhere "
          f"{mean(runs, 'dropped_everywhere_accuracy'):.4f} against the baseline's "
          f"{mean(runs, 'baseline_accuracy_on_the_same_remaining_images'):.4f} on the same remaining images")
    print(f"planted leak: {leak['found']} of {leak['planted']} found ({leak['leaked_test_images_reported']} test "
          f"images reported leaked); test accuracy {shown(leak['test_accuracy_before_leak'])} before, "
          f"{shown(leak['test_accuracy_with_leak'])} with the leak, "
          f"{shown(leak['test_accuracy_with_leak_without_leaked_images'])} without the leaked images")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="generated images, random weights: minutes")
    parser.add_argument("--seed", type=int, default=0, help="the split seed, and the flips' and the leak's")
    parser.add_argument("--curation-seeds", type=int, default=None,
                        help="split seeds of the curation runs, from --seed on (default: 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data_quality.json",
                        help="where to write")
    args = parser.parse_args(argv)
    seeds = range(args.seed, args.seed + (args.curation_seeds or (1 if args.quick else 3)))
    results: dict[str, object] = {"quick": args.quick, "seed": args.seed, "curation": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        work = Path(scratch)
        source = photos(args, work)
        results["label_errors"] = planted_label_errors(args, source, work)
        write_json(args.out, results)
        for seed in seeds:
            repo = make_pipeline_repo(work / f"repo{seed}", {**base_params(args, source, seed), "fine_tune.epochs": 0})
            run(["dvc", "repro"], repo)
            if seed == args.seed:
                # The leak is planted in the clean pipeline: a copy of it, taken before curation excludes anything.
                # The stages it re-runs work inside the copy; the MLflow store stays behind, since it names its
                # artifacts' folder by absolute path (the copy's evaluate starts a store of its own).
                shutil.copytree(repo, work / "leak_repo", symlinks=True,
                                ignore=shutil.ignore_patterns(STORE_FILE, ARTIFACTS_FOLDER))
            results["curation"][str(seed)] = curation(repo)
            write_json(args.out, results)
        results["leak"] = planted_leak(work / "leak_repo", args.seed)
        write_json(args.out, results)
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
