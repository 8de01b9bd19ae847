"""params.yaml is read in one place; every bad value is a one-line error naming the key and what is allowed."""

import re

import pytest
import yaml

from tests.helpers import set_param
from transfer.errors import ParamError
from transfer.params import (
    Params,
    read_backbone,
    read_data,
    read_evaluate,
    read_features,
    read_fine_tune,
    read_head,
    read_split,
)
from transfer.stage import run_stage
from transfer.validation import _leaves, check_all


def test_the_repository_params_parse(params_tree):
    params = Params(params_tree)
    head = read_head(params)
    tune = read_fine_tune(params)
    assert head.hidden == () and head.training.epochs >= 1
    assert tune.training.lr < head.training.lr / 10, "fine-tuning runs 10-100x below the head's learning rate"
    assert read_split(params).val + read_split(params).test < 1
    assert read_features(params).dtype == "float16"
    assert read_evaluate(params).top_k >= 1
    assert read_data(params).source.startswith("https://")
    assert read_backbone(params).name == "efficientnetb0"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("seed", "42", "an integer"),
        ("data.source", "", "a non-empty string"),
        ("data.sha256", "abc", "64 hexadecimal digits"),
        ("data.labels_csv", 3, "a non-empty string or null"),
        ("data.max_bytes", 0, "an integer >= 1"),
        ("split.val", 1.5, "a number in [0.0, 1.0)"),
        ("split.val", -0.1, "a number in [0.0, 1.0)"),
        ("split.test", 0.9, "split.val + split.test below 1"),
        ("backbone", "ResNet5O", "did you mean resnet50? expected one of convnext_base, "),
        ("weights", "models/nowhere.h5", "the path of an existing weights file"),
        ("image_size", [224], "null, a positive integer, or [height, width]"),
        ("image_size", 16, "efficientnetb0 needs at least 32x32"),
        ("features.batch_size", 0, "an integer >= 1"),
        ("features.dtype", "int8", "one of float16, float32"),
        ("head.dropout", 1.0, "[0.0, 1.0)"),
        ("head.epochs", 0, "an integer >= 1"),
        ("head.batch_size", "32", "an integer >= 1"),
        ("head.hidden", [128, -1], "a list of integers >= 1"),
        ("head.lr", 0, "a positive number"),
        ("head.patience", -1, "an integer >= 0"),
        ("head.class_weight", "auto", "one of balanced, none"),
        ("head.batchnorm", "yes", "true or false"),
        ("head.label_smoothing", 1, "a number in [0.0, 1.0)"),
        ("fine_tune.epochs", -1, "an integer >= 0"),
        ("fine_tune.unfreeze", -3, "a number of top layers >= 0, or a layer name"),
        ("fine_tune.lr", float("nan"), "a positive number"),
        ("fine_tune.batch_size", 0, "an integer >= 1"),
        ("fine_tune.augment.zoom", 2, "[0.0, 0.9]"),
        ("fine_tune.augment.flip", 1, "true or false"),
        ("evaluate.top_k", 0, "an integer >= 1"),
        ("evaluate.batch_size", 2.5, "an integer >= 1"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(params_tree, key, value, expected):
    set_param(params_tree, key, value)
    with pytest.raises(ParamError) as raised:
        check_all(Params(params_tree))
    message = str(raised.value)
    assert key in message and expected in message
    assert repr(value) in message or key in ("split.test", "image_size")
    assert "\n" not in message


def test_the_whole_file_is_checked_in_one_place(params_tree):
    params = Params(params_tree)
    check_all(params)
    assert params.keys_read == set(_leaves(params_tree)), "every key is read, so none goes unchecked"


@pytest.mark.parametrize(
    ("key", "expected"),
    [("head.dropuot", "head.dropuot is not a known param; did you mean head.dropout?"),
     ("fine_tune.augment.brightness", "fine_tune.augment.brightness is not a known param"),
     ("colour", "colour is not a known param; remove it")],
)
def test_an_unknown_key_is_a_typo_until_proven_otherwise(params_tree, key, expected):
    set_param(params_tree, key, 0.3)
    with pytest.raises(ParamError, match=re.escape(expected)):
        check_all(Params(params_tree))


def test_run_stage_checks_every_section_before_any_work(params_tree, tmp_path, monkeypatch, capsys):
    set_param(params_tree, "evaluate.top_k", 0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_tree))
    monkeypatch.chdir(tmp_path)
    worked = []
    with pytest.raises(SystemExit) as exited:
        run_stage("download", lambda: worked.append(True))
    assert exited.value.code == 2 and not worked
    err = capsys.readouterr().err.strip()
    assert err == "error: params.yaml: evaluate.top_k = 0 is invalid: expected an integer >= 1"
    assert not (tmp_path / "reports").exists(), "a refused stage writes nothing, not even its timing"


def test_a_missing_key_is_named(params_tree):
    del params_tree["head"]["patience"]
    with pytest.raises(ParamError, match="missing key 'head.patience'"):
        read_head(Params(params_tree))


def test_keys_read_are_recorded(params_tree):
    params = Params(params_tree)
    read_split(params)
    assert params.keys_read == {"split.val", "split.test"}


def test_a_missing_or_broken_file_is_a_param_error(tmp_path):
    with pytest.raises(ParamError, match="no such params file"):
        Params.load(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: [1\n")
    with pytest.raises(ParamError, match="not valid YAML") as raised:
        Params.load(tmp_path / "params.yaml")
    assert "\n" not in str(raised.value)


def test_image_size_accepts_an_int_or_a_pair(params_tree):
    params_tree["image_size"] = 160
    assert read_backbone(Params(params_tree)).image_size == (160, 160)
    params_tree["image_size"] = [96, 128]
    assert read_backbone(Params(params_tree)).image_size == (96, 128)


def test_relative_paths_are_anchored_at_the_dvc_root(monkeypatch, tmp_path):
    from transfer.params import repo_path

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert repo_path("../shared/photos.tgz") == tmp_path / "../shared/photos.tgz"
    assert repo_path("/abs/photos.tgz").as_posix() == "/abs/photos.tgz"
    monkeypatch.delenv("DVC_ROOT")
    assert repo_path("photos.tgz").as_posix() == "photos.tgz"
