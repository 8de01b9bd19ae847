"""``python -m transfer compare``: every experiment in one line each, the params that make it differ and its scores.

``dvc exp show`` prints a column for every param, metric and file hash (about 170, thousands of characters a
line). This reads the same table through DVC's public API (``dvc.api.exp_show``) and keeps what a comparison
needs: each experiment's test accuracy, the head's alone on the cached test features, the macro F1, and the params
in which it differs from the commit it was run from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer.errors import UserError

WIDTH = 119  # the longest line printed
# (column heading, the metric's key in its file, the file when DVC has to name it).
METRICS = (("accuracy", "accuracy", "reports/metrics.json"),
           ("head", "test_accuracy", "reports/head/metrics.json"),
           ("macro_f1", "macro_f1", "reports/metrics.json"))


def _column(row: dict[str, Any], key: str, file: str) -> Any:
    """A value by its key, which DVC prefixes with its file only where two files share the key."""
    return row.get(key, row.get(f"{file}:{key}"))


def _params(row: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    return {key: _column(row, key, "params.yaml") for key in keys}


def _spell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_spell(item) for item in value) + "]"
    return str(value)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def comparison_lines(rows: list[dict[str, Any]], param_keys: list[str]) -> list[str]:
    """The table :func:`compare` prints, from ``dvc.api.exp_show``'s rows (baselines, each followed by the
    experiments run from it; the workspace first)."""
    heading = f"{'experiment':<22} {'created':>9}  " + "  ".join(f"{name:>8}" for name, *_ in METRICS) + "  params"
    lines = [heading]
    def is_commit(row: dict[str, Any]) -> bool:
        return row.get("typ") == "baseline" and row.get("rev") != "workspace"

    first = next((row for row in rows if is_commit(row)), None)
    reference: dict[str, Any] = _params(first, param_keys) if first else {}
    for row in rows:
        params = _params(row, param_keys)
        commit = is_commit(row)
        if commit:
            reference = params  # the experiments listed after a commit were run from it
        changed = [f"{key}={_spell(value)}" for key, value in params.items() if value != reference.get(key)]
        name = row.get("Experiment") or row.get("rev") or "?"
        if row.get("typ") != "baseline":
            name = f"  {name}"
        scores = "  ".join(f"{_score(_column(row, key, file)):>8}" for _, key, file in METRICS)
        described = " ".join(changed) if changed else "(as committed)" if commit else "(no change)"
        state = row.get("State")
        if state and state != "Success":
            described = f"[{state.lower()}] {described}"
        line = f"{name[:22]:<22} {str(row.get('Created') or ''):>9}  {scores}  {described}"
        lines.append(line if len(line) <= WIDTH else line[: WIDTH - 3] + "...")
    return lines


def compare(repo: str | None = None) -> list[str]:
    """The comparison of the experiments of ``repo`` (the current one by default) run from its HEAD."""
    try:
        import dvc.api
        from dvc.exceptions import DvcException
    except ImportError as error:  # pragma: no cover - dvc is a requirement
        raise UserError(f"python -m transfer compare needs DVC: {error}") from None
    from transfer.params import PARAMS_FILE, flatten, read_params_file, repository_root

    root = Path(repository_root() if repo is None else repo)
    if not (root / ".dvc").is_dir():
        raise UserError(f"{root.resolve()} is not a DVC repository (it has no .dvc folder): run compare in the "
                        "project, or name it with --repo")
    try:
        rows = dvc.api.exp_show(repo=str(root))
    except DvcException as error:
        raise UserError(f"cannot list the experiments of {root}: {error}") from None
    keys = list(flatten(read_params_file(f"{root}/{PARAMS_FILE}")))
    return comparison_lines(rows, keys)
