"""params.yaml is read in one place; every bad value is a one-line error naming the key and what is allowed."""

import pytest

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
    ("key", "value", "reader", "expected"),
    [
        ("split.val", 1.5, read_split, "a number in [0.0, 1.0)"),
        ("split.test", 0.9, read_split, "split.val + split.test below 1"),
        ("head.dropout", 1.0, read_head, "[0.0, 1.0)"),
        ("head.epochs", 0, read_head, "an integer >= 1"),
        ("head.batch_size", "32", read_head, "an integer >= 1"),
        ("head.hidden", [128, -1], read_head, "a list of integers >= 1"),
        ("head.lr", 0, read_head, "a positive number"),
        ("head.class_weight", "auto", read_head, "one of balanced, none"),
        ("head.batchnorm", "yes", read_head, "true or false"),
        ("fine_tune.epochs", -1, read_fine_tune, "an integer >= 0"),
        ("fine_tune.unfreeze", -3, read_fine_tune, "a number of top layers >= 0, or a layer name"),
        ("fine_tune.augment.zoom", 2, read_fine_tune, "[0.0, 0.9]"),
        ("features.dtype", "int8", read_features, "one of float16, float32"),
        ("evaluate.top_k", 0, read_evaluate, "an integer >= 1"),
        ("data.sha256", "abc", read_data, "64 hexadecimal digits"),
        ("image_size", [224], read_backbone, "null, a positive integer, or [height, width]"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(params_tree, key, value, reader, expected):
    section, _, leaf = key.rpartition(".")
    node = params_tree
    for part in filter(None, section.split(".")):
        node = node[part]
    node[leaf] = value
    with pytest.raises(ParamError) as raised:
        reader(Params(params_tree))
    message = str(raised.value)
    assert key in message and expected in message
    assert repr(value) in message or key == "split.test"
    assert "\n" not in message


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
    with pytest.raises(ParamError, match="not valid YAML"):
        Params.load(tmp_path / "params.yaml")


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
