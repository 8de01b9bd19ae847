"""How a stage script runs: TensorFlow's native start-up chatter is filtered out of its stderr, nothing else."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

SCRIPT = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from transfer.process import quiet_native_logs
quiet_native_logs()
noise = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796029427.212582   27114 port.cc:153] oneDNN custom operations are on.\n",
    b"W0000 00:00:1796029427.212955   27114 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
    b"E0000 00:00:1796029432.283087   27114 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the flags.\n",
    b"E0000 00:00:1796099827.383670   30232 meta_optimizer.cc:967] NodeDef mentions attribute "
    b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>\n",
]
for line in noise:
    os.write(2, line[:10]); time.sleep(0.01); os.write(2, line[10:])  # split writes, as a C++ logger may make
os.write(2, b"E0000 00:00:1796029432.283087   27114 allocator.cc:10] Out of memory: a real error\n")
os.write(2, b"\rprogress 1/2")
os.write(2, b"\rprogress 2/2\n")
sys.stderr.write("INFO-like text from Python, kept\n")
print("stdout untouched")
raise ValueError("a traceback still comes through")
"""


def test_native_start_up_noise_is_filtered_and_everything_else_passes():
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, timeout=60)
    stderr = result.stderr.decode()  # as bytes: text mode would turn the progress bar's \r into line breaks
    assert result.returncode == 1 and result.stdout == b"stdout untouched\n"
    lines = stderr.split("\n")
    assert lines[:3] == ["E0000 00:00:1796029432.283087   27114 allocator.cc:10] Out of memory: a real error",
                         "\rprogress 1/2\rprogress 2/2", "INFO-like text from Python, kept"]
    assert lines[-2] == "ValueError: a traceback still comes through" and "Traceback" in stderr
    for word in ("absl::InitializeLog", "oneDNN", "cuda drivers", "cuInit", "rebuild TensorFlow",
                 "use_unbounded_threadpool"):
        assert word not in stderr, word


def test_asking_tensorflow_for_every_line_keeps_them():
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "failed call to cuInit" in result.stderr and "absl::InitializeLog" in result.stderr


LEAN_IMPORT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from transfer.process import import_tensorflow
import_tensorflow()
held_back = [name for name in ("sklearn", "pandas") if name in sys.modules]
import numpy as np
import keras
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
model.compile("adam", "categorical_crossentropy")
model.fit(np.ones((8, 4)), np.eye(2)[[0, 1] * 4], epochs=1, verbose=0)
probabilities = model.predict(np.ones((2, 4)), verbose=0)
from sklearn.metrics import accuracy_score
import pandas
print(held_back, probabilities.shape, accuracy_score([0, 1], [0, 1]), len(pandas.DataFrame({"a": [1]})))
"""


def test_a_stage_imports_tensorflow_without_kerass_scikit_learn_and_pandas_yet_can_use_both_later():
    # Keras guards both imports (try/except ImportError) and uses them only for its sklearn wrappers and DataFrame
    # inputs; if a Keras release stopped guarding one, import_tensorflow would fail here, not in a user's stage.
    result = subprocess.run([sys.executable, "-c", LEAN_IMPORT, str(REPO)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[] (2, 2) 1.0 1"


FROZEN = r"""
import gc, json, sys
sys.path.insert(0, sys.argv[1])
import transfer.stage
from transfer.errors import DataError
transfer.stage.check_params = lambda: None  # no params.yaml here: the test is about the process, not the params
made = []

def main():
    made.append([object() for _ in range(1000)])  # alive at the stage's end
    if sys.argv[2] == "fail":
        raise DataError("a user error")
    return {"images": 3}

try:
    transfer.stage.run_stage("a-stage", main, tensorflow=False)
finally:
    print(json.dumps({"frozen": gc.get_freeze_count()}))
"""


@pytest.mark.parametrize("outcome", ["done", "fail"])
def test_a_stage_leaves_its_heap_frozen_for_a_quick_exit(tmp_path, outcome):
    # The interpreter's exit walks every object the collector tracks; a TensorFlow process holds millions.
    result = subprocess.run([sys.executable, "-c", FROZEN, str(REPO), outcome], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == (0 if outcome == "done" else 2), result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["frozen"] > 1000
    timing = tmp_path / "reports" / "timings" / "a-stage.json"
    assert (json.loads(timing.read_text())["images"] == 3) if outcome == "done" else not timing.exists()
