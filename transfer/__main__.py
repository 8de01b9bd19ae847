"""``python -m transfer``: see :mod:`transfer.cli`."""

import sys

from transfer.warm import hand_over

# The commands that load a model run, like the stages, in a fork of the warm server when one can serve (not for
# their --help, which needs no TensorFlow).
if sys.argv[1:2] in (["predict"], ["export"]) and not {"-h", "--help"} & set(sys.argv[2:]):
    hand_over(__name__, __file__, module="transfer")

from transfer.cli import main  # noqa: E402 (after the hand-over)
from transfer.process import freeze_heap  # noqa: E402

status = main()
freeze_heap()  # the process ends next: its exit need not walk TensorFlow's objects
sys.exit(status)
