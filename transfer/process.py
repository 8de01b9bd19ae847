"""What a stage's process knows of itself: when its stage began, which DVC execution it belongs to, the filter
that keeps TensorFlow's native start-up chatter out of its stderr, and its import of TensorFlow.

Below everything else, so that tracking and the served model can use them without the stage runner.
"""

from __future__ import annotations

import atexit
import gc
import os
import re
import sys
import threading
import time
from pathlib import Path

_started: float | None = None  # time.time() when the running stage's run_stage began
# Set in a stage's process forked by a warm server (transfer/warm.py): the pid of the `python stages/x.py` process
# that handed the stage over, the one DVC started.
WARM_CLIENT = "TRANSFER_WARM_CLIENT"

# TensorFlow's native start-up chatter, which TF_CPP_MIN_LOG_LEVEL no longer silences (its messages come before
# absl's logging is initialised): info and warning lines, the line announcing them, the CPU-instructions note,
# the failed CUDA probe of every machine without a GPU, and tf.data's note that a graph names an attribute its op
# does not know (use_unbounded_threadpool: written by this TensorFlow itself, harmless), and oneDNN's note that it
# falls back to Eigen for uint8 on CPUs without AVX-512. Real errors (other E lines) still pass.
NATIVE_NOISE = re.compile(
    rb"^(?:[IW]\d{4} \d\d:\d\d:\d\d"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|E\d{4} .*failed call to cuInit"
    rb"|E\d{4} .*NodeDef mentions attribute use_unbounded_threadpool"
    rb"|E\d{4} .*oneDNN supports DT_UINT8 only on platforms with AVX-512"
    rb"|To enable the following instructions: .*rebuild TensorFlow)"
)
_quieted = False  # whether this process's stderr already goes through the filter
_HELD_BACK = b"IWET"  # a line starting with one of these may be noise: held until it is whole
_LONGEST_NOISE_PREFIX = 200


def quiet_native_logs() -> None:
    """Filter :data:`NATIVE_NOISE` out of this process's stderr at the file-descriptor level, where TensorFlow's
    C++ writes; everything else passes at once (progress bars included). ``TF_CPP_MIN_LOG_LEVEL=0`` keeps it
    all. For a process whose stderr is file descriptor 2 (a stage, ``python -m transfer``, the served model);
    under a test's captured stderr it does nothing. A second call does nothing either.
    """
    global _quieted
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or _quieted:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if sys.stderr.fileno() != 2:
            return
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except (AttributeError, OSError, ValueError):
        return
    os.dup2(write_end, 2)
    os.close(write_end)
    _quieted = True

    def pump() -> None:
        passing, pending = False, b""
        while chunk := os.read(read_end, 65536):
            pending += chunk
            while pending:
                end = pending.find(b"\n")
                if passing or end < 0:
                    if not passing and pending[:1] in _HELD_BACK and len(pending) < _LONGEST_NOISE_PREFIX:
                        break  # wait for the rest of the line
                    cut = len(pending) if end < 0 else end + 1
                    os.write(original, pending[:cut])
                    pending, passing = pending[cut:], end < 0
                    continue
                line, pending = pending[: end + 1], pending[end + 1 :]
                if not NATIVE_NOISE.match(line):
                    os.write(original, line)
        if pending and not NATIVE_NOISE.match(pending):
            os.write(original, pending)

    thread = threading.Thread(target=pump, name="quiet-native-logs", daemon=True)
    thread.start()

    def finish() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's only write end: the pump sees the end and drains
        thread.join(timeout=5)

    atexit.register(finish)


# Packages Keras imports at its own import when they are installed, for integrations the pipeline never uses
# through Keras: scikit-learn for keras.wrappers' estimators, pandas for DataFrames given to fit and predict. Each
# import is guarded in Keras (try/except ImportError), and together they are about a quarter of `import
# tensorflow` (1.4 s of 5.5 s, measured with -X importtime), which every stage process pays.
KERAS_OPTIONAL_IMPORTS = ("sklearn", "pandas")


class _Unavailable:
    """A meta-path finder under which the named top-level packages cannot be imported."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (held back while TensorFlow imports)", name=name)
        return None


def import_tensorflow() -> None:
    """Import TensorFlow and Keras without Keras' scikit-learn and pandas integrations (see
    :data:`KERAS_OPTIONAL_IMPORTS`): a stage that needs either imports it itself, later and as usual, and one that
    does not saves their import. Nothing changes where TensorFlow or those packages are already imported.
    Call it from a process's main thread, before other threads import anything.
    """
    if "tensorflow" in sys.modules:
        return
    held = tuple(name for name in KERAS_OPTIONAL_IMPORTS if name not in sys.modules)
    blocker = _Unavailable(held)
    sys.meta_path.insert(0, blocker)
    try:
        import keras  # noqa: F401 - imports TensorFlow, its backend
        import tensorflow  # noqa: F401
    finally:
        sys.meta_path.remove(blocker)


def freeze_heap() -> None:
    """Put every object alive now in the garbage collector's permanent generation (:func:`gc.freeze`), where no
    later collection walks it.

    For a process that imported TensorFlow and Keras: their millions of import-time objects live as long as the
    process, yet every full collection walks them, and the interpreter's exit walks them once more (about 1 s of
    a TensorFlow process's exit on 2 cores, against 0.1 s frozen). Objects made later are collected as usual; a
    frozen object that later becomes cyclic garbage is only freed with the process, so call it in processes that
    end, not in a long-lived host.
    """
    gc.freeze()


def stage_elapsed() -> float:
    """Seconds since this process's stage began (as its timing will count them); 0 outside a stage."""
    return time.time() - _started if _started is not None else 0.0


def start_clock() -> None:
    """Mark now as the start of this process's stage: what :func:`stage_elapsed` counts from."""
    global _started
    _started = time.time()


def execution_id() -> str | None:
    """Which DVC execution runs this process: the pid and start time of the nearest ``dvc`` process above it.

    Every stage of one ``dvc repro`` or ``dvc exp run`` (queued ones too) has the same; a stage restored from
    DVC's run-cache keeps the one of the execution that ran it. None outside DVC. In a stage run by a warm server
    (transfer/warm.py), the search starts from the process that handed the stage over.
    """
    try:
        import psutil

        process = psutil.Process(int(os.environ.get(WARM_CLIENT) or os.getpid())).parent()
        while process is not None:
            command = process.cmdline()
            if any(Path(part).name == "dvc" for part in command[:3]):
                return f"{process.pid}-{process.create_time():.3f}"
            process = process.parent()
    except Exception:  # noqa: BLE001 - no process table to read (or no psutil): no execution to name
        return None
    return None
