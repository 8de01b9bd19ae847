"""docs/experiments.md walked as written, in a fresh repository: -S and back, a queue with a weights file, a
failed experiment and the way back, and a clean `dvc status` at the end."""

import re
import subprocess
import time

import pytest

from tests.helpers import REPO, make_pipeline_repo, make_shapes_dataset, pipeline_env, run

pytestmark = pytest.mark.slow

WEIGHTS = "inputs/weights/backbone.weights.h5"


def _documented(prefixes: tuple[str, ...]) -> list[str]:
    """The shell lines of the code blocks of docs/experiments.md's loop (its first section) that start with one
    of ``prefixes``, comments cut."""
    text = (REPO / "docs" / "experiments.md").read_text().split("## Experiments, in the order", 1)[1]
    text = text.split("\n## ", 1)[0]
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    return [re.split(r"\s{2,}#", line)[0].strip() for line in lines if line.startswith(prefixes)]


def _shell(line: str, repo, check: bool = True) -> subprocess.CompletedProcess:
    # Not captured for the queue: its detached workers inherit the pipes, and reading them would wait for them.
    output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if line.startswith("dvc queue start") \
        else {"capture_output": True}
    return subprocess.run(["bash", "-c", line], cwd=repo, env=pipeline_env(), text=True, check=check, timeout=900,
                          **output)


def test_the_experiment_loop_works_as_the_docs_say(tmp_path):
    from transfer.model.backbones import build_backbone
    from transfer.model.registry import resolve
    from transfer.schema import BackboneParams

    source = make_shapes_dataset(tmp_path / "shapes", per_class=12, size=40)
    repo = make_pipeline_repo(tmp_path / "repo", {
        "data.source": str(source), "backbone": "mobilenetv2_0.35", "weights": "none", "image_size": 32,
        "split.val": 0.2, "split.test": 0.2, "features.batch_size": 8, "head.epochs": 10, "head.batch_size": 8,
        "fine_tune.epochs": 0,
    })
    # The quick start's order: the weights file in inputs/weights/, `dvc add`-ed, before the first run.
    build_backbone(resolve(BackboneParams("mobilenetv2_0.35", "none", [32, 32]))).save_weights(repo / WEIGHTS)
    run(["dvc", "add", WEIGHTS], repo)
    run(["dvc", "exp", "run", "-S", f"weights={WEIGHTS}"], repo)

    for hidden in ("[128]", "[]"):  # the docs' first two experiments
        assert f"dvc exp run -S 'head.hidden={hidden}'" in _documented(("dvc exp run -S 'head.hidden",))
        run(["dvc", "exp", "run", "-S", f"head.hidden={hidden}"], repo)

    queue = _documented(("git add", "git commit", "dvc exp run --queue", "dvc queue start"))
    assert [line.split()[1] for line in queue] == ["add", "commit", "exp", "exp", "queue"], queue
    for line in queue:
        _shell(line, repo)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2 and "Failed" not in status, status
    for name in run(["dvc", "exp", "list", "--name-only"], repo).stdout.split():
        logs = run(["dvc", "queue", "logs", name], repo, check=False).stdout
        assert "Running stage 'extract-features'" not in logs, f"{name} extracted again: the weights' pointer?"

    failed_line, = _documented(("dvc exp run -S weights=inputs/weights/missing.h5",))
    failed = _shell(failed_line, repo, check=False)
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("error: ")]
    assert failed.returncode != 0 and "weights = 'inputs/weights/missing.h5' is invalid" in errors[0], failed.stderr
    way_back, = _documented(("git checkout --",))
    _shell(way_back, repo)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
