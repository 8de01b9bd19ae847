"""download: fetch ``data.source`` (URL, local archive or local folder) into ``data/raw/<class>/``.

Reads params: data.source, data.sha256.
Writes: data/raw/
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DVC runs this file as a script.

from transfer.layout import RAW
from transfer.params import DataParams, Params, read_data
from transfer.sources import fetch
from transfer.stage import run_stage

log = logging.getLogger("download")


def parse_params(params: Params) -> DataParams:
    return read_data(params)


def main() -> None:
    data = parse_params(Params.load())
    classes = fetch(data.source, data.sha256, RAW)
    log.info("download: %d classes in %s: %s", len(classes), RAW, ", ".join(classes))


if __name__ == "__main__":
    run_stage("download", main)
