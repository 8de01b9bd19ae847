"""Errors a user can cause and fix, and the one place that turns them into a one-line message."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input the user can fix: a param, a file, a dataset. Printed as one line, no traceback."""


class ParamError(UserError):
    """A value in params.yaml that is missing, of the wrong type or out of range."""


class DataError(UserError):
    """A dataset, archive, image or stage input that is missing or unusable."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a :class:`UserError` exits with status 2 and one line on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
