"""``python -m transfer``: see :mod:`transfer.cli`."""

import sys

from transfer.cli import main

sys.exit(main())
