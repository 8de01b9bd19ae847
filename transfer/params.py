"""Reading ``params.yaml``: the one parser, and :class:`Params`, which checks each value as a stage reads it.

:class:`Params` remembers every dotted key it handed out, which is how a test proves that each stage reads
exactly the params ``dvc.yaml`` declares for it. The typed sections built from it are in :mod:`transfer.schema`;
the whole file is checked at once by :mod:`transfer.validation`.

The file is parsed as DVC parses it: YAML 1.2, with DVC's own parser (ruamel.yaml). A YAML 1.1 reader
such as PyYAML disagrees with DVC on values DVC itself writes: ``dvc exp run -S fine_tune.lr=0.00002``
writes ``2e-05``, a float to DVC and a string to PyYAML; ``yes``/``on`` are text to DVC and booleans to
PyYAML; ``010`` is 10 to DVC and 8 to PyYAML. With one reader, ``dvc params diff``, ``dvc exp show``, MLflow
and the stages all see the same values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transfer.errors import ParamError

PARAMS_FILE = "params.yaml"
SEED_MAX = 2**32 - 1
# Files the pipeline reads besides the photos live here, each folder a DVC dependency of the stages that read
# it, so a file changed in place re-runs them (a path anywhere else would be a change DVC cannot see).
WEIGHTS_FOLDER = Path("inputs/weights")  # weights files given by path: extract-features, fine-tune
LABELS_FOLDER = Path("inputs/labels")  # labels CSVs kept outside the source: download

_MISSING = object()
# Words that YAML 1.1 readers take for booleans but YAML 1.2 (DVC's reading) leaves as text.
_YAML11_BOOLEANS = ("yes", "no", "on", "off", "y", "n")


def parse_params_text(text: str, source: str = PARAMS_FILE) -> Any:
    """Parse params YAML with DVC's parser and YAML version (1.2), so both read the same values.

    Raises:
        ParamError: the text is not valid YAML.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as error:
        raise ParamError(f"{source}: not valid YAML: {' '.join(str(error).split())}") from None


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The parsed params tree of a file (see :func:`parse_params_text`); an empty file is an empty mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamError(f"{path}: no such params file (run the stages from the repository root)") from None
    return parse_params_text(text, str(path)) or {}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys: {"head": {"lr": 0.001}} -> {"head.lr": 0.001}. An empty mapping is a leaf
    (its key is kept, with the value {}), so that no key written in the file goes missing."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_written_hint(value: Any) -> str:
    """Why a text value may have been meant as something else, and what to write instead; or ''."""
    if not isinstance(value, str):
        return ""
    if value.strip().lower() in _YAML11_BOOLEANS:
        return f" (YAML 1.2, which DVC reads, takes {value!r} as text: write true or false)"
    try:
        float(value)
    except ValueError:
        return ""
    return f" (it is quoted, so it is text: write {value.strip()} without quotes)"


def repository_root() -> Path:
    """The main repository's root: ``DVC_ROOT`` inside a stage, else the working directory.

    DVC sets ``DVC_ROOT`` to the main repository's root for every stage, also for queued experiments that
    run in a temporary copy, so paths anchored here mean the same file wherever the stage runs.
    """
    return Path(os.environ.get("DVC_ROOT", "."))


def repo_path(value: str) -> Path:
    """A file path given in params.yaml: relative paths are relative to :func:`repository_root`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else repository_root() / path


def input_file(key: str, value: str, folder: Path, source: str = PARAMS_FILE) -> Path:
    """A file named by param ``key`` that must lie in ``folder`` (relative to the stage's directory).

    Relative paths are read from the working directory, not :func:`repository_root`: a queued experiment
    reads its own copy, the one DVC hashed (a file in git, or added with ``dvc add``). The file itself may be
    a link; the folders on its path may not lead out of ``folder``.

    Raises:
        ParamError: the path lies outside ``folder``.
    """
    given = Path(value).expanduser()
    path = given if given.is_absolute() else Path.cwd() / given
    home = (Path.cwd() / folder).resolve()
    if not path.parent.resolve().is_relative_to(home):
        raise ParamError(
            f"{source}: {key} = {value!r} is invalid: expected a file in {folder.as_posix()}/, a DVC dependency "
            f"of the stages that read it, so that a file changed in place re-runs them (copy it there, then "
            f"`dvc add` it and commit its .dvc pointer, so that queued experiments see it too)"
        )
    return path


class Params:
    """A read-only view of the params tree that validates each value as it is read.

    Args:
        tree: the parsed YAML mapping.
        source: where it came from, named in error messages.
    """

    def __init__(self, tree: dict[str, Any], source: str = PARAMS_FILE):
        if not isinstance(tree, dict):
            raise ParamError(f"{source}: expected a mapping of params at the top level")
        self._tree = tree
        self.source = source
        self.keys_read: set[str] = set()

    @property
    def tree(self) -> dict[str, Any]:
        """The parsed mapping, as loaded."""
        return self._tree

    @classmethod
    def load(cls, path: str | Path = PARAMS_FILE) -> Params:
        """Parse a params file; a missing or malformed file is a :class:`ParamError`."""
        return cls(read_params_file(path), source=str(path))

    def value(self, key: str) -> Any:
        """The raw leaf value at a dotted key."""
        node: Any = self._tree
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is _MISSING:
                raise ParamError(f"{self.source}: missing key '{key}'")
        if isinstance(node, dict):
            raise ParamError(f"{self.source}: '{key}' is a section; read its keys one by one")
        self.keys_read.add(key)
        return node

    def fail(self, key: str, value: Any, expected: str) -> ParamError:
        """The error for a bad value: names the key, the value as written, what is allowed and what to write."""
        return ParamError(f"{self.source}: {key} = {value!r} is invalid: expected {expected}{_as_written_hint(value)}")

    def int(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        """An integer; a whole number in float form (``2e10``, as ``-S`` may write it) counts as one."""
        value = self.value(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            bounds = (f" in [{minimum}, {maximum}]" if maximum is not None else
                      f" >= {minimum}" if minimum is not None else "")
            raise self.fail(key, self.value(key), "an integer" + bounds)
        return value

    def seed(self) -> int:
        """The run's seed: what NumPy's and TensorFlow's generators take, 0 to 2**32 - 1."""
        return self.int("seed", minimum=0, maximum=SEED_MAX)

    def number(self, key: str, low: float, high: float, high_open: bool = False) -> float:
        """A number in [low, high], or [low, high) when ``high_open``."""
        value = self.value(key)
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not valid or value < low or value > high or (high_open and value == high):
            raise self.fail(key, value, f"a number in [{low}, {high}{')' if high_open else ']'}")
        return float(value)

    def positive(self, key: str) -> float:
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise self.fail(key, value, "a positive number")
        return float(value)

    def bool(self, key: str) -> bool:
        value = self.value(key)
        if not isinstance(value, bool):
            raise self.fail(key, value, "true or false")
        return value

    def choice(self, key: str, choices: Sequence[str]) -> str:
        value = self.value(key)
        if value not in choices:
            raise self.fail(key, value, "one of " + ", ".join(choices))
        return value

    def text(self, key: str, optional: bool = False) -> str | None:
        value = self.value(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, value, "a non-empty string" + (" or null" if optional else ""))
        return value

    def int_list(self, key: str, minimum: int) -> tuple[int, ...]:
        value = self.value(key)
        if not isinstance(value, list) or any(
            isinstance(item, bool) or not isinstance(item, int) or item < minimum for item in value
        ):
            raise self.fail(key, value, f"a list of integers >= {minimum}, such as [128] or []")
        return tuple(value)
