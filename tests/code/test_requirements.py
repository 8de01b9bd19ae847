"""requirements.txt names every third-party package the code imports, so a fresh install can run it."""

import ast
import re
import sys
from importlib.metadata import packages_distributions

from tests.helpers import REPO


def _imported_top_levels() -> set[str]:
    """The top-level module of every import in transfer/, stages/ and bench/, lazy imports inside functions too."""
    found = set()
    for folder in ("transfer", "stages", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def _required() -> set[str]:
    names = set()
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_every_third_party_import_is_a_declared_requirement():
    ours = {"transfer", "stages", "bench", "tests"}
    third_party = {name for name in _imported_top_levels() - ours if name not in sys.stdlib_module_names}
    distributions = packages_distributions()
    missing = {}
    for module in sorted(third_party):
        provided_by = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        if not provided_by & _required():
            missing[module] = sorted(provided_by)
    assert missing == {}, f"imported but not in requirements.txt (module: distributions): {missing}"
