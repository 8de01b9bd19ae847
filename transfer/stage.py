"""How a stage script runs: logging, one-line user errors, and a record of its wall time."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from transfer.errors import UserError, one_line
from transfer.io import write_json
from transfer.layout import TIMINGS
from transfer.validation import check_params

_started: float | None = None  # time.time() when the running stage's run_stage began


def stage_elapsed() -> float:
    """Seconds since this process's stage began (as its timing will count them); 0 outside a stage."""
    return time.time() - _started if _started is not None else 0.0


def execution_id() -> str | None:
    """Which DVC execution runs this process: the pid and start time of the nearest ``dvc`` process above it.

    Every stage of one ``dvc repro`` or ``dvc exp run`` (queued ones too) has the same; a stage restored from
    DVC's run-cache keeps the one of the execution that ran it. None outside DVC.
    """
    try:
        import psutil

        process = psutil.Process().parent()
        while process is not None:
            command = process.cmdline()
            if any(Path(part).name == "dvc" for part in command[:3]):
                return f"{process.pid}-{process.create_time():.3f}"
            process = process.parent()
    except Exception:  # noqa: BLE001 - no process table to read (or no psutil): no execution to name
        return None
    return None


def run_stage(name: str, main: Callable[[], dict | None]) -> None:
    """Run a stage's ``main`` and record its wall time in ``reports/timings/<name>.json``.

    The whole of ``params.yaml`` is checked first, so a bad value anywhere stops the pipeline before any
    work. ``main`` may return a dict of further figures (such as throughput) to record with the time. A
    :class:`UserError` exits with status 2 and one line on stderr, no traceback.
    """
    global _started
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start, _started = time.perf_counter(), time.time()
    try:
        check_params()
        figures = main() or {}
    except UserError as error:
        print(one_line(error), file=sys.stderr)
        sys.exit(2)
    # The stage's own wall time wins over any "seconds" among the figures (extraction reports its loop's).
    write_json(TIMINGS / f"{name}.json", {**figures, "seconds": round(time.perf_counter() - start, 2),
                                          "execution": execution_id()})
