"""Where to set quality.duplicate_ratio: planted re-encoded copies found, pairs of different photos listed, cost.

    python bench/duplicates.py [--quick] [--out bench/results/duplicates.json]

Two data sets, each with seeded photos copied (resized to 80% and saved again as JPEG at quality 70, the
data-quality bench's planted leak):

- ``dev``: the shared 1,000-photo dev set, 50 copies (each beside its original, in its class);
- ``plain``: 2,000 generated photos of objects against one plain background (ten kinds of shape, each object
  with a surface pattern of its own, anywhere in the frame, under lighting that varies from shot to shot), 10
  copies: the case where every photo's features look alike;
- ``small``: 300 generated shapes of 48 px (the tests' shapes), 10 copies: where an 80% copy loses much of
  the little there is (CIFAR-sized images).

The report's own code judges them (``transfer.data.duplicates``: the thumbnails, the usual distances, the rule), with
every image in a split of its own so that every pair counts. For each ratio: how many copies are paired with
their original, and how many pairs of two different photos are listed. On ``plain`` it also times the whole
report (thumbnails, near-duplicates, out-of-fold probabilities, outliers) against the extraction of the same
photos' features (MobileNetV2 0.35 with the shared weights at 288 px, as extract-features makes them), and
records how the pooled features themselves rank each copy's original (why the report does not use them).

``--quick``: 200 generated photos at 96 px, random weights, a few copies (what the test runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import DEV_ARCHIVE, SHARED_WEIGHTS  # noqa: E402 (path first)
from bench.data_quality import reencoded_copy  # noqa: E402
from tests.helpers import make_shapes_dataset  # noqa: E402
from transfer.data import catalog, duplicates, quality  # noqa: E402
from transfer.io import write_json  # noqa: E402

DEV_BACKBONE = "mobilenetv2_0.35"
RATIOS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
SHAPES = ("circle", "square", "triangle", "star", "cross", "ellipse", "ring", "hexagon", "arrow", "bar")


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    corners = {"triangle": (3, (1.0,)), "square": (4, (1.0,)), "hexagon": (6, (1.0,)), "star": (10, (1.0, 0.45))}
    if kind not in corners:
        return None
    count, radii = corners[kind]
    return [(cx + r * radii[k % len(radii)] * np.cos(angle + 2 * np.pi * k / count),
             cy + r * radii[k % len(radii)] * np.sin(angle + 2 * np.pi * k / count)) for k in range(count)]


def plain_background_photos(root: Path, per_class: int, size: int, seed: int) -> Path:
    """``root/<shape>/<shape>_NNN.jpg``: one object each, on the same plain background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    grid = np.mgrid[0:size, 0:size] / size
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            mask = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(mask)
            r = rng.uniform(0.14, 0.28) * size
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            outline = _outline(kind, cx, cy, r, rng.uniform(0, 2 * np.pi))
            if outline:
                draw.polygon(outline, fill=255)
            elif kind == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            elif kind == "ellipse":
                draw.ellipse([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=255)
            elif kind == "ring":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=max(1, int(r * 0.3)))
            elif kind == "cross":
                w = r * 0.3
                draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
                draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
            elif kind == "bar":
                draw.rectangle([cx - r, cy - r / 5, cx + r, cy + r / 5], fill=255)
            else:  # arrow
                draw.rectangle([cx - r, cy - r * 0.15, cx + r * 0.3, cy + r * 0.15], fill=255)
                draw.polygon([(cx + r * 0.3, cy - r * 0.45), (cx + r, cy), (cx + r * 0.3, cy + r * 0.45)], fill=255)
            photo = Image.new("RGB", (size, size), (205, 200, 190))
            surface = Image.fromarray(rng.integers(10, 170, (5, 5, 3)).astype(np.uint8))
            photo.paste(surface.resize((size, size), Image.Resampling.BICUBIC), (0, 0), mask)
            light = (rng.uniform(-10, 10) + rng.uniform(-12, 12) * (grid[1] - 0.5)
                     + rng.uniform(-12, 12) * (grid[0] - 0.5))[..., None]
            pixels = np.asarray(photo, np.float32) + light + rng.normal(0, 1.5, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / kind / f"{kind}_{number:03d}.jpg",
                                                                          quality=90)
    return root


def dev_photos(work: Path) -> Path:
    import tarfile

    with tarfile.open(DEV_ARCHIVE) as archive:
        archive.extractall(work / "dev", filter="data")
    return next(path.parent for path in sorted((work / "dev").rglob("*")) if path.is_file()).parent


def with_copies(source: Path, count: int, seed: int) -> tuple[list[Path], list[tuple[int, int]]]:
    """``count`` seeded photos copied, re-encoded, beside their originals (``copy_<name>.jpg``); every photo
    then, sorted, and the (original, copy) positions in that list."""
    photos = sorted(path for path in source.rglob("*") if path.is_file())
    chosen = [photos[i] for i in sorted(np.random.default_rng(seed).choice(len(photos), count, replace=False))]
    made = {original: original.with_name(f"copy_{original.stem}.jpg") for original in chosen}
    for original, copy in made.items():
        reencoded_copy(original, copy)
    everything = sorted(path for path in source.rglob("*") if path.is_file())
    position = {path: i for i, path in enumerate(everything)}
    return everything, sorted((position[original], position[copy]) for original, copy in made.items())


def judged(paths: list[Path], planted: list[tuple[int, int]]) -> dict[str, object]:
    """The report's rule at each ratio, every image in a split of its own (so every pair counts)."""
    thumbs = catalog.thumbnails(paths)
    images = catalog.Images(files=[str(path) for path in paths], splits=np.array([str(i) for i in range(len(paths))]),
                            labels=np.zeros(len(paths), np.int64), features=thumbs, classes=["all"],
                            thumbnails=thumbs)
    planted = [(min(pair), max(pair)) for pair in planted]  # as the report orders a pair
    rows: dict[str, object] = {}
    for ratio in RATIOS:
        pairs, total = duplicates.near_duplicates(images, ratio)
        found = {(a, b) for a, b, *_ in pairs} & set(planted)
        different = [pair for pair in pairs if pair[:2] not in set(planted)]
        rows[f"{ratio:.2f}"] = {"copies_found": len(found), "pairs_flagged": total,
                                "pairs_of_different_photos_listed": len(different)}
    # Each copy's own ratio at its original: the margin under the chosen ratio.
    pairs, _ = duplicates.near_duplicates(images, 1.0)
    ratio_of = {(a, b): value for a, b, _, value in pairs}
    copy_ratios = sorted(round(ratio_of.get(pair, float("inf")), 4) for pair in planted)
    return {"photos": len(paths) - len(planted), "copies": len(planted),
            "pairs": len(paths) * (len(paths) - 1) // 2, "copy_ratios": copy_ratios, "ratios": rows}


def cost(paths: list[Path], source: Path, backbone: str, weights: str | None, size: int,
         planted: list[tuple[int, int]]) -> dict[str, object]:
    """The whole report's seconds against extraction's on the same photos, and how the pooled features rank
    each copy's original."""
    from bench.heads import extract

    start = time.perf_counter()
    features = extract(source, backbone, weights, size)
    extraction = time.perf_counter() - start
    scan = features["scan"]
    photos = [source / path for path, _, _ in scan.images]
    assert sorted(photos) == paths, "the scan sees the photos listed"
    start = time.perf_counter()
    labels = np.array([scan.classes.index(label) for _, label, _ in scan.images])
    images = catalog.Images(files=[str(path) for path in photos],
                            splits=np.where(np.arange(len(photos)) % 5 == 0, "test", "train"), labels=labels,
                            features=features["mirror"], classes=scan.classes)
    images.thumbnails = catalog.thumbnails(photos)
    report = quality.assess(images, 5, 0.2, 0)
    seconds = time.perf_counter() - start
    row = {path: i for i, path in enumerate(photos)}
    unit = catalog.unit_rows(features["mirror"])
    ranks = []
    for original, copy in planted:
        similarity = unit @ unit[row[paths[copy]]]
        similarity[row[paths[copy]]] = -np.inf
        ranks.append(int((similarity > similarity[row[paths[original]]]).sum()))
    return {"extraction_seconds": round(extraction, 2), "report_seconds": round(seconds, 2),
            "report_share_of_extraction": round(seconds / extraction, 4),
            "near_duplicate_pairs_at_0.2_train_test": report.pair_count,
            "feature_rank_of_original": ranks, "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 generated photos, random weights: a minute")
    parser.add_argument("--seed", type=int, default=0, help="which photos are copied, and the generated photos")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "duplicates.json",
                        help="where to write")
    args = parser.parse_args(argv)
    results: dict[str, object] = {"quick": args.quick, "seed": args.seed, "thumbnail": catalog.THUMBNAIL,
                                  "usual_rank": duplicates.USUAL_RANK, "same_picture": duplicates.SAME_PICTURE}
    with tempfile.TemporaryDirectory(prefix="bench-duplicates-") as scratch:
        work = Path(scratch)
        if args.quick:
            plain = plain_background_photos(work / "plain", per_class=20, size=96, seed=args.seed)
            small = make_shapes_dataset(work / "small", per_class=30, size=48, seed=args.seed)
            sets = {"plain": (plain, 4), "small": (small, 4)}
            backbone, weights, size = DEV_BACKBONE, None, 96
        else:
            if not DEV_ARCHIVE.is_file():
                raise SystemExit(f"error: {DEV_ARCHIVE} is missing; run with --quick for generated photos")
            plain = plain_background_photos(work / "plain", per_class=200, size=400, seed=args.seed)
            small = make_shapes_dataset(work / "small", per_class=100, size=48, seed=args.seed)
            sets = {"dev": (dev_photos(work), 50), "plain": (plain, 10), "small": (small, 10)}
            backbone, weights, size = DEV_BACKBONE, str(SHARED_WEIGHTS[DEV_BACKBONE]), 288
        for name, (source, count) in sets.items():
            paths, planted = with_copies(source, count, args.seed)
            record = judged(paths, planted)
            if name == "plain":
                record["cost"] = cost(paths, source, backbone, weights, size, planted)
            results[name] = record
            write_json(args.out, results)
            print(f"\n{name}: {record['photos']} photos, {record['copies']} copies, {record['pairs']} pairs; "
                  f"each copy's ratio to its original: {record['copy_ratios']}")
            print("  ratio  copies found  pairs flagged  pairs of different photos listed")
            for ratio, row in record["ratios"].items():
                print(f"  {ratio:5}  {row['copies_found']:>12}  {row['pairs_flagged']:>13}  "
                      f"{row['pairs_of_different_photos_listed']:>8}")
            if "cost" in record:
                print(f"  the report: {record['cost']['report_seconds']} s against extraction's "
                      f"{record['cost']['extraction_seconds']} s "
                      f"({100 * record['cost']['report_share_of_extraction']:.1f}%); pooled features rank the "
                      f"originals {record['cost']['feature_rank_of_original']}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
