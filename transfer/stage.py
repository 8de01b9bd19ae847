"""How a stage script runs: the whole of ``params.yaml`` checked first, logging, one-line user errors, and
a record of its wall time.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from transfer.errors import UserError, one_line
from transfer.io import write_json
from transfer.layout import TIMINGS
from transfer.process import execution_id, freeze_heap, import_tensorflow, quiet_native_logs, start_clock
from transfer.validation import check_params


def run_stage(name: str, main: Callable[[], dict | None], tensorflow: bool = True) -> None:
    """Run a stage's ``main`` and record its wall time in ``reports/timings/<name>.json``.

    The whole of ``params.yaml`` is checked first, so a bad value anywhere stops the pipeline before any
    work. Then a stage that uses ``tensorflow`` imports it, lean (:func:`transfer.process.import_tensorflow`).
    The heap is frozen after that import and again at the end (:func:`transfer.process.freeze_heap`), so a
    TensorFlow process exits in a tenth of a second instead of one. ``main`` may return a dict of further figures
    (such as throughput) to record with the time. A :class:`UserError` exits with status 2 and one line on
    stderr, no traceback.
    """
    quiet_native_logs()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    start_clock()
    try:
        check_params()
        if tensorflow:
            import_tensorflow()
            freeze_heap()  # the libraries' objects, never walked again: by later collections or at exit
        figures = main() or {}
    except UserError as error:
        print(one_line(error), file=sys.stderr)
        freeze_heap()
        sys.exit(2)
    # The stage's own wall time wins over any "seconds" among the figures (extraction reports its loop's).
    write_json(TIMINGS / f"{name}.json", {**figures, "seconds": round(time.perf_counter() - start, 2),
                                          "execution": execution_id()})
    freeze_heap()  # what the stage made, too (TensorFlow imported later, say): the process ends next
