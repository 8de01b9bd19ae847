"""Transfer learning on a folder of labelled photos: the library behind the DVC stages in ``stages/``."""

import os

# TensorFlow's C++ info and warning logs bury the stage's own output (a few lines printed before
# TensorFlow initialises its logging still get through).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
