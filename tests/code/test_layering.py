"""The package's floors: each module imports only from its own floor or the ones below, with no circle, and
each says in its first line what it is for.

From the bottom: the foundations at the top level of ``transfer/`` (errors, io, layout, params and their
schema, the process and its warm server, plotting); ``data/``; ``model/``; ``serve/``; ``report/`` (tracking logs
the served photo model); and the runners at the top level again (validation, which asks the model registry,
the stage runner, the CLI).
"""

import ast

import pytest

from tests.helpers import REPO, transfer_imports

PACKAGE = REPO / "transfer"
FOUNDATIONS = {"transfer", "transfer.errors", "transfer.io", "transfer.layout", "transfer.params",
               "transfer.schema", "transfer.process", "transfer.warm", "transfer.warm_server", "transfer.plotting"}
RUNNERS = {"transfer.validation", "transfer.stage", "transfer.cli", "transfer.compare", "transfer.__main__"}
FLOORS = ["foundations", "data", "model", "serve", "report", "runners"]
MAX_LINES = 350
# Over MAX_LINES as one concern: the schema is every params.yaml key's type, range and meaning, each section's
# dataclass beside the function that reads it, in the order of the file.
LONGER = {"transfer.schema"}


def _modules() -> dict[str, object]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


MODULES = _modules()


def _floor(module: str) -> str:
    if module in FOUNDATIONS:
        return "foundations"
    if module in RUNNERS:
        return "runners"
    parts = module.split(".")
    assert len(parts) >= 2 and parts[1] in FLOORS, f"{module} belongs to no floor: put it in a subpackage or a set"
    return parts[1]


def _imports(module: str) -> set[str]:
    """The project modules ``module`` imports, at its top or inside a function."""
    return {name for name in transfer_imports(MODULES[module]) if name in MODULES and name != module}


def test_every_module_is_on_a_floor_and_imports_nothing_from_a_floor_above():
    above = {}
    for module in MODULES:
        mine = FLOORS.index(_floor(module))
        for imported in _imports(module):
            if FLOORS.index(_floor(imported)) > mine:
                above.setdefault(module, []).append(imported)
    assert above == {}


@pytest.mark.parametrize("lower, higher", [("data", ("model", "report", "serve")), ("model", ("report", "serve"))])
def test_the_lower_subpackages_never_reach_up(lower, higher):
    reached = {module: sorted(name for name in _imports(module) if name.split(".")[1:2] and
                              name.split(".")[1] in higher)
               for module in MODULES if module.startswith(f"transfer.{lower}")}
    assert {module: names for module, names in reached.items() if names} == {}


def test_no_module_imports_itself_back_through_others():
    graph = {module: _imports(module) - {"transfer"} for module in MODULES}
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                circles.append(path[path.index(imported):] + [imported] if imported in path else [module, imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_every_module_opens_with_its_purpose_and_stays_short():
    problems = []
    for module, path in MODULES.items():
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text))
        if not docstring or len(docstring.split("\n", 1)[0].split()) < 4:
            problems.append(f"{module}: no one-line purpose at its top")
        lines = len(text.splitlines())
        if lines > MAX_LINES and module not in LONGER:
            problems.append(f"{module}: {lines} lines (over {MAX_LINES}: split it by concern, or say why not)")
    assert problems == []


def test_the_floors_test_sees_the_layering_it_guards():
    """The walk finds the imports that matter (a lazy one inside a function too), so the tests above can fail."""
    assert "transfer.process" in _imports("transfer.report.record")
    assert "transfer.serve.serving" in _imports("transfer.report.tracking")  # a lazy import, inside a function
    assert _floor("transfer.report.tracking") == "report" and _floor("transfer.schema") == "foundations"
    assert FLOORS.index(_floor("transfer.serve.serving")) > FLOORS.index(_floor("transfer.model.classifier"))


def _defined(module: str) -> set[str]:
    """What ``module`` itself defines at its top (not what it imports), and its submodules."""
    names = {name.rpartition(".")[2] for name in MODULES if name.rpartition(".")[0] == module}
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
    return names


def _trees(path):
    """A file's syntax tree, and those of the Python scripts it holds as strings (what tests and benchmarks run
    in a child process)."""
    tree = ast.parse(path.read_text())
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "transfer" in node.value:
            try:
                yield ast.parse(node.value)
            except SyntaxError:  # prose, not a script
                continue


def test_every_name_is_imported_from_the_module_that_defines_it():
    """No import leans on another module's imports (the floors above are judged on where things live), in the
    code and in the scripts it runs in child processes."""
    borrowed = []
    for folder in ("transfer", "stages", "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for tree in _trees(path):
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(
                            "transfer"):
                        if node.module not in MODULES:
                            borrowed.append(f"{path.relative_to(REPO)}: no module {node.module}")
                            continue
                        borrowed += [f"{path.relative_to(REPO)}: {alias.name} from {node.module}"
                                     for alias in node.names if alias.name not in _defined(node.module)]
    assert borrowed == []
