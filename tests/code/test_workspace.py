"""The tests never depend on the workspace's params.yaml, which a user's experiments change."""

import subprocess
import sys

from tests.helpers import REPO, committed_params_text


def test_tests_read_the_projects_params_not_an_experiments_leftovers_or_a_users_baseline(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    project = committed_params_text()  # this checkout may itself sit on a user's baseline
    # A user's baseline, committed before queueing experiments (as docs/experiments.md says): another backbone
    # and source, which the defaults' own test would refuse.
    baseline = project.replace("backbone: efficientnetb0", "backbone: mobilenetv2_0.35")
    assert baseline != project
    (clone / "params.yaml").write_text(baseline)
    for command in (["config", "user.name", "test"], ["config", "user.email", "test@example.com"],
                    ["commit", "-q", "-am", "Baseline"]):
        subprocess.run(["git", *command], cwd=clone, check=True, timeout=60)
    # Then what a failed `dvc exp run -S seed=-1 -S head.lr=0.0001` leaves in the workspace: a bad seed, and a
    # head learning rate below fine-tuning's.
    (clone / "params.yaml").write_text(baseline.replace("lr: 0.001", "lr: 0.0001").replace("seed: 42", "seed: -1"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/code/test_params.py::test_the_repository_params_parse",
         "tests/code/test_params.py::test_params_rewritten_by_dvc_set_param_read_as_dvc_reads_them"],
        cwd=clone, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-2000:]
    assert "seed: -1" in (clone / "params.yaml").read_text(), "the workspace's params.yaml is left as it was"


def test_the_modules_kept_on_one_test_worker_exist():
    from tests.conftest import ONE_WORKER_MODULES

    assert all((REPO / module).is_file() for module in ONE_WORKER_MODULES), sorted(ONE_WORKER_MODULES)
