"""Library internals on purpose only: every private name of another package (one starting with ``_``) that the
code of transfer/, stages/ or bench/ touches is listed here, with the comment beside it that says why and the
test that pins what it is relied on for."""

import ast
import re

from tests.helpers import REPO

FOLDERS = ("transfer", "stages", "bench")
# name -> (the file that uses it, the test that pins the behaviour relied on)
ALLOWED = {
    "_inbound_nodes": ("transfer/model/trunk.py",
                       "tests/code/test_trunk.py::test_the_keras_internals_the_split_relies_on"),
    "_keras_history": ("transfer/model/trunk.py",
                       "tests/code/test_trunk.py::test_the_keras_internals_the_split_relies_on"),
    # The connection handler a warm server forks ends there, without the interpreter's shutdown: the atexit hooks
    # and the heap it shares with the server are not its own.
    "_exit": ("transfer/warm_server.py",
              "tests/code/test_warm.py::test_the_server_outlives_its_stages_and_leaves_no_process_behind"),
    "_skip_type_hint_validation": (
        "transfer/serve/serving.py",
        "tests/code/test_serving.py::test_mlflow_still_honours_the_served_models_type_hint_switch"),
}


def _trees(extra=()):
    paths = [path for folder in FOLDERS for path in sorted((REPO / folder).rglob("*.py"))] + list(extra)
    for path in paths:
        name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
        yield name, ast.parse(path.read_text())


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def library_private_uses(extra=()) -> dict[str, set[str]]:
    """Private names read from objects of other packages, by name: the files that use each.

    A private name is the project's own when the project binds it somewhere (a def, a class, an argument, an
    assignment, an import) and reads it too; a private class attribute that the project only sets (never reads) is
    an override of a library's switch.
    """
    bound, read, class_sets = set(), set(), []
    for path, tree in _trees(extra):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add(node.asname or node.name.split(".")[-1])
            elif isinstance(node, ast.Name):
                (bound if isinstance(node.ctx, ast.Store) else read).add(node.id)
            elif isinstance(node, ast.Attribute):
                (bound if isinstance(node.ctx, ast.Store) else read).add(node.attr)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    read.add(str(node.args[1].value))
            if isinstance(node, ast.ClassDef):
                class_sets += [(path, target.id) for statement in node.body if isinstance(statement, ast.Assign)
                               for target in statement.targets if isinstance(target, ast.Name)]
    uses: dict[str, set[str]] = {}
    for path, tree in _trees(extra):
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                name = node.attr
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr") \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                name = str(node.args[1].value)
            if name and _private(name) and name not in bound:
                uses.setdefault(name, set()).add(path)
    for path, name in class_sets:
        if _private(name) and name not in read:
            uses.setdefault(name, set()).add(path)
    return uses


def _explained(path) -> set[str]:
    """The names a comment block that says "private" mentions, in it or on the line right after it."""
    names, block = set(), []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            block.append(line)
            continue
        if block and any("private" in comment.lower() for comment in block):
            names.update(re.findall(r"_\w+", " ".join(block) + " " + line))
        block = []
    return names


def test_every_library_private_name_is_allowed_on_purpose():
    uses = library_private_uses()
    assert {name: sorted(paths) for name, paths in uses.items()} == \
        {name: [path] for name, (path, _) in ALLOWED.items()}


def test_each_allowed_name_has_its_reason_beside_it_and_a_test_that_pins_it():
    for name, (path, pin) in ALLOWED.items():
        assert name in _explained(REPO / path), f"{path}: no comment saying why {name}, a private name, is used"
        test_file, test_name = pin.split("::")
        test_text = (REPO / test_file).read_text()
        assert re.search(rf"^def {test_name}\(", test_text, re.M), pin
        body = test_text.split(f"def {test_name}(", 1)[1].split("\ndef ", 1)[0]
        assert name in body, f"{pin} does not touch {name}"


def test_the_walk_finds_a_private_name_read_from_a_library_object(tmp_path):
    """A planted read of Keras' private ``_layers`` and a planted override are found, so the first test can fail;
    a private name the code binds and reads is its own."""
    planted = tmp_path / "planted.py"
    planted.write_text("class Model(Base):\n    _private_switch = True\n\n"
                       "def f(model):\n    model._mine = 1\n    return model._layers, model._mine\n")
    uses = library_private_uses([planted])
    assert uses.get("_layers") == {"planted.py"} and uses.get("_private_switch") == {"planted.py"}
    assert "_mine" not in uses
    assert _explained(REPO / "transfer/model/trunk.py") >= {"_inbound_nodes", "_keras_history"}
