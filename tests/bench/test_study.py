"""The study commands of docs/experiments.md are the ones bench/study.py queues (and the e2e test runs)."""

import re
import shlex

from bench.study import CIFAR10_URL, STUDY, experiment_params, queue_commands
from tests.helpers import REPO


def test_the_docs_queue_exactly_the_study_bench_study_runs():
    text = (REPO / "docs" / "experiments.md").read_text()
    section = text.split("## Transfer against training from scratch", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    queued = [shlex.split(line) for line in block.splitlines() if line.startswith("dvc exp run --queue")]
    assert queued == queue_commands(CIFAR10_URL)


def test_offline_and_quick_change_only_what_they_say():
    for name in STUDY:
        full, offline = experiment_params(name), experiment_params(name, offline=True)
        assert {key for key in full if full[key] != offline[key]} == ({"weights"} if full["weights"] == "imagenet"
                                                                      else set())
        quick = experiment_params(name, quick=True)
        assert {key for key in full if full[key] != quick[key]} <= {"head.epochs", "fine_tune.epochs"}
        assert bool(quick["fine_tune.epochs"]) == bool(full["fine_tune.epochs"]), "no fine-tune stays none"
