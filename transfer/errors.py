"""Errors a user can cause and fix; :func:`transfer.stage.run_stage` prints them as one line."""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix: a param, a file, a dataset. Printed as one line, no traceback."""


class ParamError(UserError):
    """A value in params.yaml that is missing, of the wrong type or out of range."""


class DataError(UserError):
    """A dataset, archive, image or stage input that is missing or unusable."""



def one_line(error: Exception) -> str:
    """The error as the single ``error: ...`` line a user sees, whatever line breaks its message held."""
    return "error: " + " ".join(str(error).split())
