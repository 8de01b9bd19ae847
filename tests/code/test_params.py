"""params.yaml is read in one place; every bad value is a one-line error naming the key and what is allowed."""

import re
from dataclasses import asdict

import pytest
import yaml

from tests.helpers import committed_params_text, set_param
from transfer.errors import ParamError
from transfer.params import Params, flatten, parse_params_text
from transfer.schema import (
    read_backbone,
    read_data,
    read_evaluate,
    read_features,
    read_fine_tune,
    read_head,
    read_quality,
    read_split,
)
from transfer.stage import run_stage
from transfer.validation import check_all


def test_the_repository_params_parse(params_tree):
    params = Params(params_tree)
    head = read_head(params)
    tune = read_fine_tune(params)
    assert head.hidden == () and head.training.epochs >= 1
    assert tune.training.lr < head.training.lr, "fine-tuning runs below the head's learning rate"
    if tune.training.lr > head.training.lr / 10:
        # A peak this close to the head's would wreck the pretrained features in the first steps without a warmup.
        assert tune.training.schedule == "cosine" and tune.training.warmup_epochs >= 1
    assert read_split(params).val + read_split(params).test < 1
    assert read_features(params).dtype == "float16"
    assert read_evaluate(params).top_k >= 1
    assert read_data(params).source.startswith("https://")
    assert read_backbone(params).name == "efficientnetb0"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("seed", "42", "an integer"),
        ("seed", -1, "an integer in [0, 4294967295]"),
        ("seed", 2**32, "an integer in [0, 4294967295]"),
        ("data.source", "", "a non-empty string"),
        ("data.sha256", "abc", "64 hexadecimal digits"),
        ("data.labels_csv", 3, "a non-empty string or null"),
        ("data.max_bytes", 0, "an integer >= 1"),
        ("split.val", 1.5, "a number in [0.0, 1.0)"),
        ("split.val", -0.1, "a number in [0.0, 1.0)"),
        ("split.test", 0.9, "split.val + split.test below 1"),
        ("split.shipped_test", "yes", "true or false"),
        ("features.layer", 3, "a non-empty string or null"),
        ("backbone", "ResNet5O", "did you mean resnet50? expected one of convnext_base, "),
        ("weights", "inputs/weights/nowhere.h5", "the path of an existing weights file"),
        ("weights", "models/nowhere.h5", "expected a file in inputs/weights/"),
        ("image_size", [224], "null, a positive integer, or [height, width]"),
        ("image_size", 16, "efficientnetb0 needs at least 32x32"),
        ("image_size", 20000, "sides of at most 2048 pixels"),
        ("image_size", [224, 4096], "sides of at most 2048 pixels"),
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
        ("fine_tune.blend", 1.5, "a number in [0.0, 1.0]"),
        ("fine_tune.unfreeze", -3, "a number of top layers >= 0, or a layer name"),
        ("fine_tune.unfreeze", 238, "a number of top layers up to 237 (efficientnetb0 has 237)"),
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
    assert params.keys_read == set(flatten(params_tree)), "every key is read, so none goes unchecked"


@pytest.mark.parametrize(
    ("key", "expected"),
    [("head.dropuot", "head.dropuot is not a known param; did you mean head.dropout?"),
     ("fine_tune.augment.hue", "fine_tune.augment.hue is not a known param"),
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
    monkeypatch.setattr("transfer.stage.freeze_heap", lambda: None)  # this worker lives on; a stage's process ends
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
    assert params.keys_read == {"split.val", "split.test", "split.shipped_test"}


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


def test_a_weights_file_must_be_in_the_folder_dvc_watches(params_tree, monkeypatch, tmp_path):
    from transfer.params import WEIGHTS_FOLDER, input_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "inputs/weights/sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "inputs/weights/sub/link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for inside in ("inputs/weights/w.h5", "inputs/weights/sub/w.h5", str(tmp_path / "inputs/weights/w.h5")):
        params_tree["weights"] = inside
        assert read_backbone(Params(params_tree)).weights == inside
    for keyword in ("imagenet", "none", "ImageNet"):
        params_tree["weights"] = keyword
        assert read_backbone(Params(params_tree)).weights == keyword
    for outside in ("w.h5", "models/w.h5", "inputs/weights/../w.h5", "inputs/weights/sub/link/w.h5",
                    str(tmp_path.parent / "w.h5")):
        params_tree["weights"] = outside
        with pytest.raises(ParamError, match=r"weights = .* is invalid: expected a file in inputs/weights/"):
            read_backbone(Params(params_tree))
    assert input_file("k", "inputs/weights/w.h5", WEIGHTS_FOLDER) == tmp_path / "inputs/weights/w.h5"


def test_the_trunk_cache_is_the_default_and_takes_any_augmentation_params(params_tree):
    """With the cache, fine_tune.augment's changes other than the flip are not used (the cache's copies carry
    features.view_augment's), so they are no reason to refuse it."""
    from transfer.schema import read_features, read_fine_tune

    assert read_fine_tune(Params(params_tree)).trunk_cache and read_features(Params(params_tree)).trunk_views == 0
    params_tree["fine_tune"]["augment"].update(rotation=0.05, contrast=0.1)
    assert read_fine_tune(Params(params_tree)).trunk_cache
    params_tree["features"]["trunk_views"] = 33
    with pytest.raises(ParamError, match=r"features.trunk_views"):
        read_features(Params(params_tree))


def test_grad_cam_on_a_backbone_that_flattens_its_maps_is_refused_before_any_work(params_tree):
    params_tree.update(backbone="small_cnn", weights="none", image_size=32)
    params_tree["fine_tune"]["unfreeze"] = "all"
    params_tree["evaluate"]["gradcam"] = 4
    with pytest.raises(ParamError, match=r"evaluate.gradcam = 4 is invalid: expected 0 with backbone small_cnn: it is "
                                         r"trained from scratch and flattens its feature map"):
        check_all(Params(params_tree))
    params_tree["evaluate"]["gradcam"] = 0
    check_all(Params(params_tree))
    params_tree.update(backbone="vgg16")  # pretrained, and its maps are pooled: explained as usual
    params_tree["evaluate"]["gradcam"] = 4
    check_all(Params(params_tree))


def _numeric_and_boolean_keys(tree: dict) -> tuple[list[str], list[str]]:
    leaves = flatten(tree)
    numbers = [key for key, value in leaves.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    booleans = [key for key, value in leaves.items() if isinstance(value, bool)]
    return numbers, booleans


def test_params_rewritten_by_dvc_set_param_read_as_dvc_reads_them(default_params, tmp_path):
    """Every numeric key in exponent form and every boolean key flipped, written by DVC's own ``-S`` code."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text(committed_params_text())
    numbers, booleans = _numeric_and_boolean_keys(default_params)
    # Left false: true refuses the default augmentation, which this test keeps (read in exponent form).
    booleans.remove("fine_tune.trunk_cache")
    assert {"seed", "head.lr", "fine_tune.lr", "data.max_bytes", "split.val"} <= set(numbers)
    assert {"head.batchnorm", "fine_tune.augment.flip", "evaluate.tta"} <= set(booleans)
    flat = flatten(default_params)
    expected = {key: float(flat[key]) for key in numbers}
    expected.update({key: not flat[key] for key in booleans})
    expected["fine_tune.lr"] = 2e-05  # the issue's own sweep value
    overrides = [f"{key}={float(flat[key]):e}" for key in numbers if key != "fine_tune.lr"]
    overrides += ["fine_tune.lr=0.00002"]
    overrides += [f"{key}={str(not flat[key]).lower()}" for key in booleans]
    apply_overrides(path, overrides)

    written = path.read_text()
    assert "lr: 2e-05" in written, "DVC writes small floats in exponent form, without a dot"
    assert isinstance(yaml.safe_load(written)["fine_tune"]["lr"], str), "a YAML 1.1 reader takes it for text"

    params = Params.load(path)
    check_all(params)  # the whole file validates, as every stage checks it first
    reads = {
        "seed": params.int("seed"),
        "data.max_bytes": read_data(params).max_bytes,
        "split.val": read_split(params).val,
        "split.test": read_split(params).test,
        "split.shipped_test": read_split(params).shipped_test,
        "features.batch_size": read_features(params).batch_size,
        "features.mirror": read_features(params).mirror,
        "features.train_views": read_features(params).train_views,
        "features.trunk_views": read_features(params).trunk_views,
    }
    head, tune = read_head(params), read_fine_tune(params)
    sections = {"head": asdict(head.training), "fine_tune": asdict(tune.training),
                "fine_tune.augment": asdict(tune.augment), "evaluate": asdict(read_evaluate(params)),
                "features.view_augment": asdict(read_features(params).view_augment),
                "quality": asdict(read_quality(params))}
    for section, fields in sections.items():
        reads.update({f"{section}.{name}": value for name, value in fields.items()})
    reads.update({"head.dropout": head.dropout, "head.batchnorm": head.batchnorm, "head.search": head.search,
                  "fine_tune.unfreeze": tune.unfreeze, "fine_tune.blend": tune.blend})
    for key, value in expected.items():
        assert key in reads, f"{key} was not checked"
        assert reads[key] == value, f"{key}: read {reads[key]!r}, DVC wrote {value!r}"
        if isinstance(flat[key], int) and not isinstance(flat[key], bool):
            assert type(reads[key]) is int, f"{key}: an integer param read as {reads[key]!r}"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("2e-05", "head.lr", 2e-05),
        ("1e-4", "head.lr", 1e-4),
        ("010", "seed", 10),  # YAML 1.1 reads 8 (octal); DVC reads 10
        ("2e10", "data.max_bytes", 20_000_000_000),
    ],
)
def test_values_mean_what_dvc_says_they_mean(tmp_path, default_params, text, key, value):
    section, _, leaf = key.rpartition(".")
    path = tmp_path / "params.yaml"
    lines = committed_params_text().splitlines()
    indent = "  " if section else ""
    in_section = not section
    for i, line in enumerate(lines):
        if section and line == f"{section}:":
            in_section = True
        elif in_section and line.startswith(f"{indent}{leaf}:"):
            lines[i] = f"{indent}{leaf}: {text}"
            break
    path.write_text("\n".join(lines) + "\n")
    params = Params.load(path)
    read = params.int(key) if isinstance(value, int) else params.positive(key)
    assert read == value and type(read) is type(value)


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("fine_tune.augment.flip", "yes", "takes 'yes' as text: write true or false"),
        ("evaluate.tta", "on", "takes 'on' as text: write true or false"),
        ("head.lr", "1e-3", "it is quoted, so it is text: write 1e-3 without quotes"),
        ("seed", "7", "write 7 without quotes"),
    ],
)
def test_where_yaml_readers_disagree_the_error_says_what_to_write(params_tree, key, value, hint):
    set_param(params_tree, key, value)
    with pytest.raises(ParamError) as raised:
        check_all(Params(params_tree))
    message = str(raised.value)
    assert f"{key} = {value!r} is invalid" in message and hint in message


# A second value for each key of params.yaml, valid on its own (check_all accepts it with every other key at its
# default). Keys that take lists or null go through both kinds of value, as `dvc exp run -S` users write them.
_SECOND_VALUES = {
    "backbone": ["mobilenetv2_0.35"],
    "weights": ["inputs/weights/mobilenet_v2_weights.h5", "none"],
    "image_size": [160, [224, 160]],
    "strategy": ["default"],
    "mixed_precision": [False],
    "data.source": ["inputs/photos.tgz", "https://example.com/data/photos.tar.gz"],
    "data.sha256": ["ab" * 32],
    "data.labels_csv": ["labels.csv"],
    "data.exclude": ["curation/other_exclude.csv"],
    "data.relabel": ["curation/other_relabel.csv"],
    "features.dtype": ["float32"],
    "features.layer": ["block_13_expand"],
    "head.hidden": [[128], [400, 256, 256]],
    "head.class_weight": ["balanced"],
    "head.optimizer": ["sgd"],
    "head.schedule": ["cosine"],
    "fine_tune.unfreeze": ["all", 40],
    "quality.duplicate_ratio": [0.1],
    "fine_tune.class_weight": ["balanced"],
    "fine_tune.optimizer": ["adam"],
    "fine_tune.schedule": ["constant"],
}


# Their second values name files this checkout does not have, which check_all would refuse for that alone.
_FILES_NOT_HERE = {"weights", "data.labels_csv", "data.exclude", "data.relabel"}


def _second_values(key: str, value) -> list:
    if key in _SECOND_VALUES:
        return _SECOND_VALUES[key]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [round(value / 2, 6) if value else 0.05]
    raise AssertionError(f"params.yaml's {key} = {value!r} has no second value in _SECOND_VALUES")


def _override(key: str, value) -> str:
    """``key=value`` as a user types it after ``-S`` (Hydra's override grammar)."""
    def spell(item) -> str:
        if item is None:
            return "null"
        if isinstance(item, bool):
            return str(item).lower()
        if isinstance(item, list):
            return "[" + ",".join(spell(element) for element in item) + "]"
        if isinstance(item, str) and ":" in item:
            return f"'{item}'"
        return str(item)
    return f"{key}={spell(value)}"


def test_every_key_survives_dvc_set_param_and_back_byte_for_byte(tmp_path):
    """Each key of the committed params.yaml, set to another value by DVC's own ``-S`` writer and then back:
    every step reads and validates, and the way back gives the committed file again, comments included.

    The file is written as DVC's writer writes it (a null is an empty value, a long value goes on its own line)
    and no comment sits where that writer loses it (after a list, or on a list's line)."""
    from dvc.utils.hydra import apply_overrides

    committed = committed_params_text()
    path = tmp_path / "params.yaml"
    path.write_text(committed)
    apply_overrides(path, ["seed=42"])
    assert path.read_text() == committed, "params.yaml is not as DVC's writer writes it: a -S rewrites all of it"

    defaults = flatten(parse_params_text(committed))
    for key, default in defaults.items():
        path.write_text(committed)
        for value in [*_second_values(key, default), default]:
            apply_overrides(path, [_override(key, value)])
            params = Params.load(path)
            read = flatten(params.tree)
            assert read[key] == value, f"-S {_override(key, value)}: read back {read[key]!r}"
            assert {k: v for k, v in read.items() if k != key} == {
                k: v for k, v in defaults.items() if k != key}, f"-S {_override(key, value)} changed other keys"
            if value != default and key not in _FILES_NOT_HERE:
                check_all(params)
        assert path.read_text() == committed, f"-S {key}=... and back did not give params.yaml back"
