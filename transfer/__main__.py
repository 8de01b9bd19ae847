"""``python -m transfer``: see :mod:`transfer.cli`."""

import sys

from transfer.cli import main
from transfer.process import freeze_heap

status = main()
freeze_heap()  # the process ends next: its exit need not walk TensorFlow's objects
sys.exit(status)
