"""Where to set quality.duplicate_similarity: how similar re-encoded copies and different photos look, per size.

    python bench/duplicates.py [--quick] [--copies 50] [--image-sizes 224,288] [--out bench/duplicates.json]

Seeded ``--copies`` photos of the dev set are resized to 80% and saved again as JPEG at quality 70 (the data-
quality bench's planted leak). Every photo and every copy goes through the backbone at each size as
extract-features caches them (each image averaged with its mirror, stored as float16), and the cosine similarity
the report uses is taken between each copy and every photo (is its original the nearest?), and between every two
different photos. For each threshold: how many copies it finds, and how many pairs of different photos reach
it (among them shots of one scene, which the report lists too, and different photos that merely look alike).
The threshold is a property of the feature space, so a new default size or backbone needs this again.

Data: the shared 1,000-photo dev set with the shared MobileNetV2 0.35 weights. ``--quick``: generated shapes,
random weights, 32 px (what the test runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import DEV_ARCHIVE, SHARED_WEIGHTS, write_json_whole  # noqa: E402 (path first)
from bench.data_quality import photos as photo_folder  # noqa: E402
from bench.data_quality import reencoded_copy  # noqa: E402
from bench.heads import extract  # noqa: E402
from tests.helpers import make_shapes_dataset  # noqa: E402
from transfer.quality import unit_rows  # noqa: E402

DEV_BACKBONE = "mobilenetv2_0.35"
THRESHOLDS = (0.80, 0.82, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.90, 0.92)


def make_copies(source: Path, target: Path, count: int, seed: int) -> list[str]:
    """Re-encoded copies of ``count`` seeded photos under ``target``, in their class folders; their relative paths."""
    photos = sorted(path.relative_to(source).as_posix() for path in source.rglob("*") if path.is_file())
    chosen = [photos[i] for i in sorted(np.random.default_rng(seed).choice(len(photos), count, replace=False))]
    for relative in chosen:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        reencoded_copy(source / relative, (target / relative).with_suffix(".jpg"))
    return chosen


def similarities(source: Path, copies: Path, backbone: str, weights: str | None, size: int) -> dict[str, np.ndarray]:
    """Each copy's similarity to its original and whether that is its nearest photo, and every pair of different
    photos' similarity (the upper triangle)."""
    photos, copied = extract(source, backbone, weights, size), extract(copies, backbone, weights, size)
    index = {Path(path).with_suffix("").as_posix(): i for i, (path, _, _) in enumerate(photos["scan"].images)}
    originals = [index[Path(path).with_suffix("").as_posix()] for path, _, _ in copied["scan"].images]
    everyone, copy_rows = unit_rows(photos["mirror"]), unit_rows(copied["mirror"])
    pairs = everyone @ everyone.T
    return {"copies": np.sum(everyone[originals] * copy_rows, axis=1),
            "different": pairs[np.triu_indices(len(everyone), 1)],
            "original_is_nearest": (copy_rows @ everyone.T).argmax(axis=1) == np.array(originals)}


def table(measured: dict[str, np.ndarray]) -> dict[str, object]:
    copies, different = measured["copies"], measured["different"]
    return {
        "copies": len(copies),
        "copy_similarity": {"min": round(float(copies.min()), 4), "p10": round(float(np.percentile(copies, 10)), 4),
                            "median": round(float(np.median(copies)), 4), "max": round(float(copies.max()), 4)},
        # Copies whose most similar photo of the whole set is their own original.
        "original_is_nearest": int(measured["original_is_nearest"].sum()),
        "different_pairs": len(different),
        "most_similar_different_pairs": [round(float(value), 4) for value in np.sort(different)[::-1][:10]],
        "thresholds": {f"{t:.2f}": {"copies_found": int((copies >= t).sum()),
                                    "different_pairs_at_or_above": int((different >= t).sum())}
                       for t in THRESHOLDS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="generated shapes, random weights: a minute")
    parser.add_argument("--copies", type=int, default=50, help="re-encoded copies (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="which photos are copied")
    parser.add_argument("--image-sizes", default="224,288", help="comma-separated sides (default 224,288)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "duplicates.json", help="where to write")
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in args.image_sizes.split(",") if size.strip()]
    except ValueError:
        raise SystemExit(f"error: --image-sizes {args.image_sizes!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < 32 or args.copies < 1:
        raise SystemExit(f"error: --image-sizes {args.image_sizes!r} (each 32 or more) and --copies {args.copies} "
                         "(1 or more)")
    results: dict[str, object] = {"quick": args.quick, "copies": args.copies, "seed": args.seed,
                                  "cpu_count": os.cpu_count(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-duplicates-") as scratch:
        if args.quick:
            source = make_shapes_dataset(Path(scratch) / "shapes", per_class=20, size=48)
            backbone, weights = "resnet50", None
        else:
            if not DEV_ARCHIVE.is_file():
                raise SystemExit(f"error: {DEV_ARCHIVE} is missing; run with --quick for generated images")
            source = photo_folder(args, Path(scratch))
            backbone, weights = DEV_BACKBONE, str(SHARED_WEIGHTS[DEV_BACKBONE])
        make_copies(source, Path(scratch) / "copies", args.copies, args.seed)
        results["backbone"] = backbone
        for size in sizes:
            record = table(similarities(source, Path(scratch) / "copies", backbone, weights, size))
            results["sizes"][str(size)] = record
            write_json_whole(args.out, results)
            print(f"\n{backbone} at {size} px: {args.copies} copies, similarity to their original "
                  f"{record['copy_similarity']}")
            print("  threshold  copies found  pairs of different photos at or above")
            for threshold, row in record["thresholds"].items():
                print(f"  {threshold:9}  {row['copies_found']:>12}  {row['different_pairs_at_or_above']:>8}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
