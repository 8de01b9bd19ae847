"""``python -m transfer compare``: one line per experiment from DVC's own table."""

from transfer.compare import WIDTH, comparison_lines

KEYS = ["backbone", "head.lr", "head.hidden", "image_size"]


def _row(kind: str, name: str | None, rev: str, **values):
    return {"Experiment": name, "rev": rev, "typ": kind, "Created": "12:08 PM", "State": values.pop("State", None),
            **values}


def test_each_experiment_gets_its_scores_and_the_params_it_changed():
    rows = [
        _row("baseline", None, "workspace", **{"backbone": "vgg16", "head.lr": 0.003, "head.hidden": [128],
                                               "image_size": None, "accuracy": 0.91}),
        _row("baseline", None, "main", **{"backbone": "vgg16", "head.lr": 0.001, "head.hidden": [],
                                          "image_size": None, "accuracy": 0.9, "test_accuracy": 0.88,
                                          "macro_f1": 0.895}),
        # Where two metric files share a key, DVC names the file.
        _row("branch_commit", "quiet-owl", "a1b2c3d", **{"backbone": "vgg16", "head.lr": 0.003, "head.hidden": [128],
                                                         "image_size": None, "accuracy": 0.91,
                                                         "reports/head/metrics.json:test_accuracy": 0.9}),
        _row("branch_base", "loud-cat", "e4f5a6b", State="Failed", **{"backbone": "resnet50", "head.lr": 0.001,
                                                                      "head.hidden": [], "image_size": 160}),
    ]
    lines = comparison_lines(rows, KEYS)
    assert lines[0].split() == ["experiment", "created", "accuracy", "head", "macro_f1", "params"]
    assert lines[1].startswith("workspace") and lines[1].endswith("head.lr=0.003 head.hidden=[128]")
    assert lines[2].split()[0] == "main" and "0.9000    0.8800    0.8950  (as committed)" in lines[2]
    assert lines[3].startswith("  quiet-owl")
    assert "0.9100    0.9000         -  head.lr=0.003 head.hidden=[128]" in lines[3]
    assert lines[4].endswith("[failed] backbone=resnet50 image_size=160") and "       -         -         -" in lines[4]


def test_a_long_line_is_cut_at_the_width():
    many = {f"k{i}": i for i in range(40)}
    rows = [_row("baseline", None, "main", **dict.fromkeys(many, 0)), _row("branch_base", "wide", "b", **many)]
    lines = comparison_lines(rows, list(many))
    assert max(len(line) for line in lines) <= WIDTH and lines[2].endswith("...")


def test_outside_a_dvc_repository_it_says_so_in_one_line(tmp_path):
    import pytest

    from transfer.compare import compare
    from transfer.errors import UserError

    with pytest.raises(UserError, match="is not a DVC repository \\(it has no .dvc folder\\)"):
        compare(str(tmp_path))
