"""split: validate every image under ``data/raw`` and split them per class into train, val and test.

Reads params: seed, split.val, split.test, split.shipped_test, data.exclude, data.relabel.
Reads: data/raw/, reports/download.json (its left-out rows are listed again in reports/data.json; how many
    images of the data set's own test split it wrote, as test-* files, which become the test split), the
    curation CSVs (images to leave out, labels to correct), applied after the split is drawn so that every
    other image keeps its split
Writes: data/splits/{train,val,test}.csv (path,label), data/splits/classes.json, reports/data.json
"""

import logging
import sys
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.data.images import scan_images
from transfer.data.splits import curate, data_report, split_keeping_test, stratified_split, write_splits
from transfer.io import atomic_path, read_json, write_json
from transfer.layout import DATA_REPORT, DOWNLOAD_REPORT, RAW, SHIPPED_TEST_PREFIX, SPLITS
from transfer.params import Params
from transfer.schema import CurationParams, SplitParams, read_curation, read_split
from transfer.stage import run_stage

log = logging.getLogger("split")


def parse_params(params: Params) -> tuple[int, SplitParams, CurationParams]:
    return params.seed(), read_split(params), read_curation(params)


def main() -> None:
    seed, fractions, curation = parse_params(Params.load())
    scan = scan_images(RAW)
    fetched = read_json(DOWNLOAD_REPORT) if DOWNLOAD_REPORT.is_file() else None
    shipped = (fetched or {}).get("shipped_test", 0)
    if shipped and fractions.shipped_test:
        drawn = split_keeping_test(scan.images, scan.classes, fractions.val, seed,
                                   lambda path: PurePosixPath(path).name.startswith(SHIPPED_TEST_PREFIX))
        test_split = f"shipped with the data set ({shipped} images); split.test is not used"
    else:
        drawn = stratified_split(scan.images, scan.classes, fractions.val, fractions.test, seed)
        test_split = f"drawn: split.test = {fractions.test} of each class" + (
            f", from all images (the data set's own test split of {shipped} pooled in: split.shipped_test is "
            "false)" if shipped else "")
    # Relative to the working directory, where DVC runs the stage and where it checks these dependencies (for
    # a queued experiment, its own copy of the files).
    splits, fixes = curate(drawn, scan.classes, Path(curation.exclude), Path(curation.relabel))
    with atomic_path(SPLITS) as staging:
        staging.mkdir()
        write_splits(staging, splits, scan.classes)
    report = {**data_report(scan, splits, fetched, fixes), "test_split": test_split}
    write_json(DATA_REPORT, report)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    log.info("split: test %s", test_split)
    log.info("split: %d classes, %s; %d file(s) excluded, %d of them by %s, and %d relabelled by %s (see %s)",
             len(scan.classes), sizes, len(report["excluded"]), sum(fixes["excluded"].values()), curation.exclude,
             sum(fixes["relabelled"].values()), curation.relabel, DATA_REPORT)


if __name__ == "__main__":
    run_stage("split", main)
