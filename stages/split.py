"""split: validate every image under ``data/raw`` and split them per class into train, val and test.

Reads params: seed, split.val, split.test.
Reads: data/raw/, reports/download.json (its left-out rows are listed again in reports/data.json)
Writes: data/splits/{train,val,test}.csv (path,label), data/splits/classes.json, reports/data.json
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.datasets import data_report, scan_images, stratified_split, write_splits
from transfer.io import atomic_path, read_json, write_json
from transfer.layout import DATA_REPORT, DOWNLOAD_REPORT, RAW, SPLITS
from transfer.params import Params, SplitParams, read_split
from transfer.stage import run_stage

log = logging.getLogger("split")


def parse_params(params: Params) -> tuple[int, SplitParams]:
    return params.seed(), read_split(params)


def main() -> None:
    seed, fractions = parse_params(Params.load())
    scan = scan_images(RAW)
    splits = stratified_split(scan.images, scan.classes, fractions.val, fractions.test, seed)
    with atomic_path(SPLITS) as staging:
        staging.mkdir()
        write_splits(staging, splits, scan.classes)
    report = data_report(scan, splits, read_json(DOWNLOAD_REPORT) if DOWNLOAD_REPORT.is_file() else None)
    write_json(DATA_REPORT, report)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    log.info("split: %d classes, %s; %d file(s) excluded (see %s)", len(scan.classes), sizes,
             len(report["excluded"]), DATA_REPORT)


if __name__ == "__main__":
    run_stage("split", main)
