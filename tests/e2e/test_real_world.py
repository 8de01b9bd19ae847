"""Dirty photo sets, hostile archives, bad params and a killed stage, through the real `dvc repro`."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.helpers import add_dirty_files, make_pipeline_repo, make_shapes_dataset, pipeline_env, run, stages_run

# One pytest-xdist worker runs this whole module (tests/conftest.py, ONE_WORKER_MODULES): its module-scoped
# pipeline run is built once, not once per worker.
pytestmark = pytest.mark.slow

PARAMS = {
    "backbone": "resnet50",
    "weights": "none",
    "image_size": 32,
    "split.val": 0.2,
    "split.test": 0.2,
    "features.batch_size": 4,
    "head.epochs": 30,
    "head.batch_size": 8,
    "fine_tune.epochs": 0,
}


@pytest.fixture(scope="module")
def dirty_source(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    source = make_shapes_dataset(tmp_path_factory.mktemp("dirty") / "photos", per_class=15, size=48)
    return source, add_dirty_files(source)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, dirty_source):
    base = tmp_path_factory.mktemp("e2e-real")
    repo = make_pipeline_repo(base / "repo", {**PARAMS, "data.source": str(dirty_source[0])})
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "clean run"], repo)
    return repo


@pytest.fixture(scope="module")
def clean(repo) -> dict[str, bytes]:
    """The clean run's metrics and features, kept before later tests change the workspace."""
    files = ("reports/metrics.json", "reports/data.json", "data/features/train_features.npy",
             "data/features/test_features.npy")
    return {name: (repo / name).read_bytes() for name in files}


def _tree(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if ".git" not in path.parts}


def test_bad_files_are_listed_and_the_model_trains_on_the_rest(repo, clean, dirty_source):
    _, expected = dirty_source
    data = json.loads(clean["reports/data.json"])
    reasons = {row["path"]: row["reason"] for row in data["excluded"]}
    assert set(reasons) == set(expected)
    for path, reason in expected.items():
        assert reason in reasons[path], (path, reasons[path])
    # 45 shapes + PNG-named-.jpg, CMYK, gray, RGBA, 16-bit, and a byte-identical copy of the RGBA one.
    assert data["images"] == 51
    assert data["duplicates"] == [["square/copy_of_rgba.png", "square/rgba.png"]]
    assert not any(".ipynb_checkpoints" in path or ".DS_Store" in path for path in _tree(repo / "data/raw"))
    metrics = json.loads(clean["reports/metrics.json"])
    assert metrics["images"] == sum(data["counts"]["test"].values())
    assert metrics["accuracy"] >= 0.6


# From data/.raw-fetch.tmp<pid>/extracted/, five levels up is the folder around the repository.
ESCAPING = "photos/../../../../../escaped.txt"


def _hostile_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as bundle:
        for name in ("photos/cats/ok.jpg", "photos/dogs/ok.jpg", ESCAPING):
            info = tarfile.TarInfo(name)
            info.size = 4
            bundle.addfile(info, io.BytesIO(b"evil"))
    return path


def test_a_hostile_archive_is_refused_in_one_line_and_nothing_escapes(repo, clean, tmp_path):
    archive = _hostile_tar(tmp_path / "photos.tar")
    around = repo.parent
    outside = {path for path in _tree(around) if not path.startswith("repo/")}
    result = run(["dvc", "exp", "run", "-S", f"data.source={archive}"], repo, check=False)
    run(["git", "checkout", "--", "params.yaml"], repo)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0] == (
        f"error: archive {archive} is refused: member '{ESCAPING}' would be written outside the target"
    )
    assert "Traceback" not in result.stderr
    assert {path for path in _tree(around) if not path.startswith("repo/")} == outside
    assert not list(around.rglob("escaped.txt")) and not list(tmp_path.rglob("escaped.txt"))
    assert not [path for path in _tree(repo / "data") if path.startswith(".")], "no scratch left in data/"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("backbone=resnet5O", "error: params.yaml: backbone = 'resnet5O' is invalid: did you mean resnet50?"),
        ("split.test=0.9", "error: params.yaml: split.test = 0.9 is invalid: expected split.val + split.test below 1"),
        ("evaluate.top_k=0", "error: params.yaml: evaluate.top_k = 0 is invalid: expected an integer >= 1"),
        ("weights=inputs/weights/missing.h5", "error: params.yaml: weights = 'inputs/weights/missing.h5' is "
                                              "invalid: expected imagenet, none, or the path of an existing weights "
                                              "file"),
        ("weights=models/backbone.h5", "error: params.yaml: weights = 'models/backbone.h5' is invalid: expected a "
                                       "file in inputs/weights/, a DVC dependency of the stages that read it"),
        ("data.max_bytes=-5", "error: params.yaml: data.max_bytes = -5 is invalid: expected an integer >= 1"),
    ],
)
def test_each_bad_param_is_one_line_naming_the_key(repo, setting, message):
    result = run(["dvc", "exp", "run", "-S", setting], repo, check=False)
    run(["git", "checkout", "--", "params.yaml"], repo)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and errors[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def _stage_pid(repo: Path, script: str) -> int | None:
    """The pid of the process running ``script`` in ``repo``, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if script.encode() in command and Path(os.readlink(entry / "cwd")) == repo:
                return int(entry.name)
        except OSError:
            continue
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the stage process through /proc")
@pytest.mark.parametrize("victim", ["stage", "dvc-and-stage"])
def test_kill_9_during_extraction_then_repro_gives_the_clean_metrics(clean, dirty_source, tmp_path, victim):
    """The stage alone (out of memory) or DVC with it (a crash): either way the next repro finishes the job."""
    other = make_pipeline_repo(tmp_path / "repo", {**PARAMS, "data.source": str(dirty_source[0])})
    repro = subprocess.Popen(["dvc", "repro"], cwd=other, env=pipeline_env(), start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed_inside = None
    deadline = time.time() + 300
    while repro.poll() is None and time.time() < deadline:
        pid = _stage_pid(other, "stages/extract_features.py")
        staging = list((other / "data").glob(".features.tmp*"))
        if pid and staging:
            if victim == "stage":
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(repro.pid, signal.SIGKILL)
            killed_inside = staging[0]
            break
        time.sleep(0.005)
    output = repro.communicate(timeout=120)[0].decode()
    assert killed_inside is not None, f"extract-features was never caught midway:\n{output}"
    assert repro.returncode != 0
    assert _stage_pid(other, "stages/extract_features.py") is None
    assert not (other / "data/features").exists(), "a killed extraction leaves no output under its name"

    result = run(["dvc", "repro"], other)
    assert stages_run(result) == ["extract-features", "train-head", "fine-tune", "evaluate"]
    assert not list((other / "data").glob(".features.*")), "the dead process's temporaries are cleared"
    for name, content in clean.items():
        assert (other / name).read_bytes() == content, name


def test_a_kaggle_folder_with_a_labels_csv_runs_through(repo, dirty_source, tmp_path):
    source, _ = dirty_source
    flat = tmp_path / "kaggle"
    (flat / "train").mkdir(parents=True)
    rows = ["id,breed"]
    for image in sorted(source.glob("*/*_0*.*")):
        image_id = f"{image.parent.name[:2]}{image.stem[-3:]}"
        (flat / "train" / f"{image_id}{image.suffix}").write_bytes(image.read_bytes())
        rows.append(f"{image_id},{image.parent.name}")
    rows.append("missing01,circle")
    (flat / "labels.csv").write_text("\n".join(rows) + "\n")
    result = run(["dvc", "exp", "run", "-S", f"data.source={flat}", "-S", "data.labels_csv=labels.csv"], repo)
    data = json.loads((repo / "reports/data.json").read_text())
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)
    assert stages_run(result) == ["download", "split", "extract-features", "train-head", "fine-tune", "evaluate"]
    assert data["layout"] == "labels CSV labels.csv"
    assert data["images"] == 45
    assert {"path": "missing01", "reason": "listed in labels.csv but no such image", "stage": "download"} in data[
        "excluded"]


def _resnet_weights(path: Path, scale: float) -> Path:
    """A weights file for the 32 px ResNet50 of PARAMS: its seeded random weights, times ``scale``."""
    from transfer.model.backbones import build_backbone
    from transfer.model.registry import resolve
    from transfer.schema import BackboneParams

    backbone = build_backbone(resolve(BackboneParams("resnet50", "none", [32, 32])))
    backbone.set_weights([weight * scale for weight in backbone.get_weights()])
    backbone.save_weights(path)
    return path


def test_a_weights_file_swapped_in_place_reruns_from_extract_features(repo):
    weights = _resnet_weights(repo / "inputs/weights/backbone.weights.h5", 1.0)
    # As far as fine-tune, the last stage that reads the weights.
    first = run(["dvc", "exp", "run", "-S", "weights=inputs/weights/backbone.weights.h5", "fine-tune"], repo)
    assert stages_run(first) == ["extract-features", "train-head", "fine-tune"]
    assert _status(repo, "fine-tune") == {}, "unchanged weights: nothing to do"
    features, model = ((repo / name).read_bytes() for name in ("data/features/train_features.npy",
                                                               "models/model.keras"))
    _resnet_weights(weights, 0.5)  # other values, same path, same params
    changed = _status(repo, "fine-tune")
    # Run by hand, without DVC, fine-tune still refuses to put the old head on the new backbone.
    by_hand = run(["python", "stages/fine_tune.py"], repo, check=False)
    model_by_hand = (repo / "models/model.keras").read_bytes()
    result = run(["dvc", "exp", "run", "-S", "fine_tune.lr=0.0002", "fine-tune"], repo)
    new_features = (repo / "data/features/train_features.npy").read_bytes()
    weights.unlink()
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)
    assert sorted(changed) == ["extract-features", "fine-tune"], changed
    assert all(changed[stage][0]["changed deps"] == {"inputs/weights": "modified"} for stage in changed), changed
    errors = [line for line in by_hand.stderr.splitlines() if line.startswith("error: ")]
    assert by_hand.returncode != 0 and "are not the ones that made data/features" in errors[0], by_hand.stderr
    assert "Traceback" not in by_hand.stderr
    assert model_by_hand == model, "the refused run leaves the model it found"
    assert stages_run(result) == ["extract-features", "train-head", "fine-tune"]
    assert new_features != features


def test_a_labels_csv_changed_in_place_is_a_change_dvc_sees(repo, dirty_source, tmp_path):
    source, _ = dirty_source
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["file,label"]
    for image in sorted(source.glob("*/*_0*.*")):
        (flat / image.name).write_bytes(image.read_bytes())
        rows.append(f"{image.name},{image.parent.name}")
    labels = repo / "inputs/labels/shapes.csv"
    labels.write_text("\n".join(rows) + "\n")
    outside = tmp_path / "shapes.csv"
    outside.write_text(labels.read_text())
    refused = run(["dvc", "exp", "run", "-S", f"data.source={flat}", "-S", f"data.labels_csv={outside}"], repo,
                  check=False)
    run(["git", "checkout", "--", "params.yaml"], repo)
    # The pipeline as far as split, which counts the labels: what follows a changed split is DVC's own cascade
    # (tests/e2e/test_pipeline.py re-runs from split); here the question is whether DVC sees the change at all.
    first = run(["dvc", "exp", "run", "-S", f"data.source={flat}", "-S", "data.labels_csv=inputs/labels/shapes.csv",
                 "split"], repo)
    circles = _class_total(repo, "circle")
    unchanged = _status(repo, "split")
    # Three circles relabelled as squares, in place.
    relabelled = [row.replace(",circle", ",square") if row.startswith("circle_00") else row for row in rows]
    labels.write_text("\n".join(relabelled) + "\n")
    changed = _status(repo, "split")
    again = run(["dvc", "exp", "run", "split"], repo)
    circles_now = _class_total(repo, "circle")
    downstream = _status(repo)
    labels.unlink()
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode != 0 and "a labels CSV kept outside the source must be in inputs/labels/" in errors[0]
    assert stages_run(first) == ["download", "split"] and unchanged == {}, unchanged
    assert list(changed) == ["download"], changed
    assert changed["download"][0]["changed deps"] == {"inputs/labels": "modified"}, changed
    assert stages_run(again) == ["download", "split"]
    assert "extract-features" in downstream, "the relabelled split is a change for every stage after it"
    relabelled_circles = sum(row.startswith("circle_00") for row in rows)
    assert relabelled_circles >= 3 and circles_now == circles - relabelled_circles, (circles, circles_now)


def _class_total(repo: Path, name: str) -> int:
    counts = json.loads((repo / "reports/data.json").read_text())["counts"]
    return sum(split[name] for split in counts.values())


def _status(repo: Path, upto: str | None = None) -> dict:
    """``dvc status``: every stage, or only ``upto`` and the stages before it."""
    target = ["--with-deps", upto] if upto else []
    return json.loads(run(["dvc", "status", "--json", *target], repo).stdout or "{}")


def test_photos_changed_in_place_are_a_change_dvc_sees(repo, dirty_source, tmp_path):
    import shutil

    source = tmp_path / "photos"
    shutil.copytree(dirty_source[0], source)
    # As far as split, as the labels CSV test above runs it.
    first = run(["dvc", "exp", "run", "-S", f"data.source={source}", "split"], repo)
    assert stages_run(first)[0] == "download"
    circles = _class_total(repo, "circle")
    assert _status(repo, "split") == {}, "unchanged photos: nothing to do"
    # Four circles filed as squares, in place: the params and the folder's name are what they were.
    for photo in sorted((source / "circle").glob("circle_0*"))[:4]:
        photo.rename(source / "square" / f"moved_{photo.name}")
    changed = _status(repo, "split")
    assert list(changed) == ["download"], changed
    assert changed["download"][0]["changed deps"] == {str(source): "modified"}, changed
    again = run(["dvc", "exp", "run", "split"], repo)
    circles_moved = _class_total(repo, "circle")
    # An archive changed in place: the same name, other bytes.
    archive = tmp_path / "photos.tgz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(source, arcname="photos")
    run(["dvc", "exp", "run", "-S", f"data.source={archive}", "split"], repo)
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(source / "circle", arcname="photos/circle")
        bundle.add(source / "triangle", arcname="photos/triangle")
    archived = _status(repo, "split")
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)
    assert stages_run(again) == ["download", "split"]
    assert circles_moved == circles - 4, (circles, circles_moved)
    assert list(archived) == ["download"], archived
    assert archived["download"][0]["changed deps"] == {str(archive): "modified"}, archived


def test_sixty_classes_of_three_photos_run_through_with_fewer_folds(tmp_path):
    """Every class smaller than quality.folds (5) once stopped extract-features with scikit-learn's traceback.
    The data-quality report now takes as many folds as the largest class allows, and says so."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    source = tmp_path / "photos"
    for index in range(60):
        colour = rng.integers(0, 256, 3)
        (source / f"class_{index:02d}").mkdir(parents=True)
        for copy in range(3):
            pixels = np.clip(colour + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(source / f"class_{index:02d}" / f"{copy}.png")
    settings = {key: value for key, value in PARAMS.items() if not key.startswith("split.")}
    repo = make_pipeline_repo(tmp_path / "repo", {**settings, "data.source": str(source)})
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no class has more than 3 images, so 3 folds instead of quality.folds = 5" in result.stderr
    assert json.loads((repo / "reports/data_quality/metrics.json").read_text())["folds"] == 3
    assert json.loads((repo / "reports/metrics.json").read_text())["images"] == 60
