"""download: fetch ``data.source`` (URL, local archive or folder, array data set) into ``data/raw/<class>/``.

Reads params: data.source, data.sha256, data.labels_csv, data.max_bytes.
Writes: data/raw/, reports/download.json (the layout found; labels CSV rows that gave no image; how many images
    of an array data set's own test split it wrote, named test-*)
"""

import logging
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.data.sources import fetch
from transfer.io import write_json
from transfer.layout import DOWNLOAD_REPORT, RAW
from transfer.params import Params
from transfer.schema import DataParams, read_data
from transfer.stage import run_stage

log = logging.getLogger("download")


def parse_params(params: Params) -> DataParams:
    return read_data(params)


def main() -> None:
    data = parse_params(Params.load())
    fetched = fetch(data, RAW)
    write_json(DOWNLOAD_REPORT, asdict(fetched))
    classes = ", ".join(fetched.classes)
    log.info("download: %d classes in %s (%s): %s", len(fetched.classes), RAW, fetched.layout, classes)
    if fetched.excluded:
        log.warning("download: %d entr%s of the source left out: links not followed, labels CSV rows with no "
                    "image (see %s)", len(fetched.excluded), "y" if len(fetched.excluded) == 1 else "ies",
                    DOWNLOAD_REPORT)


if __name__ == "__main__":
    run_stage("download", main, tensorflow=False)
