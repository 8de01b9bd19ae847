"""The data-quality report on generated features, and the curation files split applies."""

import json

import numpy as np
import pytest
from PIL import Image

from transfer import quality
from transfer.datasets import curate
from transfer.errors import DataError, ParamError, UserError
from transfer.io import read_csv, spreadsheet_safe, write_csv
from transfer.params import Params, read_curation, read_quality

CLASSES = ["a", "b", "c", "d"]


def _clusters(per_class: int = 60, dim: int = 32, spread: float = 0.6, seed: int = 0):
    """Features of four classes around random centres (separable, with overlap at the edges), and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), dim)) * 2
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    features = centres[labels] + rng.normal(scale=spread * 2, size=(len(labels), dim))
    return features.astype(np.float32), labels


def _images(features, labels, test_every: int = 5) -> quality.Images:
    """Every ``test_every``-th image in test, the next in val, the rest in train."""
    positions = np.arange(len(labels))
    splits = np.where(positions % test_every == 0, "test", np.where(positions % test_every == 1, "val", "train"))
    files = [f"{CLASSES[label]}/{i:04d}.png" for i, label in enumerate(labels)]
    return quality.Images(files=files, splits=splits, labels=np.asarray(labels), features=features,
                          classes=CLASSES)


def test_flipped_labels_rank_first_among_the_suspects():
    features, truth = _clusters()
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(truth), 12, replace=False)
    given = truth.copy()
    given[flipped] = (given[flipped] + rng.integers(1, len(CLASSES), len(flipped))) % len(CLASSES)
    probabilities = quality.out_of_fold_probabilities(features, given, len(CLASSES), folds=5, seed=0)
    assert probabilities.shape == (len(given), len(CLASSES))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    ranking = quality.label_issue_ranking(given, probabilities)
    found = set(ranking[: 2 * len(flipped)].tolist()) & set(flipped.tolist())
    assert len(found) >= 0.8 * len(flipped), f"{len(found)} of {len(flipped)} flipped labels in the first 24"
    estimate = quality.estimated_label_errors(given, probabilities)
    assert len(flipped) // 2 <= estimate <= 3 * len(flipped), estimate
    # Lowest self-confidence first, and never an image whose given label is its best guess.
    confidence = probabilities[ranking, given[ranking]]
    assert np.all(np.diff(confidence) >= 0)
    assert np.all(probabilities[ranking].argmax(axis=1) != given[ranking])


def test_clean_labels_give_few_suspects_and_the_folds_are_seeded():
    features, labels = _clusters(spread=0.3)
    first = quality.out_of_fold_probabilities(features, labels, len(CLASSES), folds=5, seed=3)
    again = quality.out_of_fold_probabilities(features, labels, len(CLASSES), folds=5, seed=3)
    assert np.array_equal(first, again)
    assert quality.estimated_label_errors(labels, first) <= 2


def test_a_class_smaller_than_the_folds_still_gets_probabilities():
    features, labels = _clusters(per_class=10)
    keep = np.r_[0:30, 30:32]  # class d keeps two images
    probabilities = quality.out_of_fold_probabilities(features[keep], labels[keep], len(CLASSES), folds=5, seed=0)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    with pytest.raises(DataError, match="at least 2 images"):
        quality.out_of_fold_probabilities(features[:1], labels[:1], len(CLASSES), folds=5, seed=0)


def test_a_resized_copy_across_splits_is_a_leak_and_copies_within_a_split_are_not():
    features, labels = _clusters()
    images = _images(features, labels)
    test_row = 10  # test (10 % 5 == 0)
    images.features[12] = features[test_row] * 1.02 + 0.01  # train: a re-encoded copy, nearly the same features
    images.features[13] = features[12]  # train: an exact copy of that, in the same split
    pairs, scores, total = quality.neighbourhoods(images, threshold=0.98)
    assert {(a, b) for a, b, _ in pairs} == {(test_row, 12), (test_row, 13)} and total == 2
    assert all(similarity >= 0.98 for *_, similarity in pairs)
    assert quality.leaked(images, pairs, "test").tolist() == [test_row]
    rows = quality.duplicate_rows(images, pairs)
    assert {row[-1] for row in rows} == {"train-test"} and rows[0][1] == "test"
    assert scores.shape == (len(labels),)
    # The copies themselves are not outliers: each has a close neighbour.
    assert scores[12] < np.median(scores) and scores[13] < np.median(scores)


def test_an_image_far_from_every_class_is_the_first_outlier():
    features, labels = _clusters()
    features[7] = np.full(features.shape[1], 40.0) * np.sign(np.arange(features.shape[1]) % 2 - 0.5)
    images = _images(features, labels)
    _, scores, _ = quality.neighbourhoods(images, threshold=0.99)
    flagged = quality.flagged_outliers(scores)
    assert flagged[0] == 7
    assert len(flagged) < len(labels) // 10


def test_the_blocked_pass_matches_the_whole_matrix(monkeypatch):
    features, labels = _clusters(per_class=25)
    images = _images(features, labels)
    whole = quality.neighbourhoods(images, threshold=0.9)
    monkeypatch.setattr(quality, "BLOCK", 7)
    blocked = quality.neighbourhoods(images, threshold=0.9)
    assert whole[0] == blocked[0]
    assert np.allclose(whole[1], blocked[1])


def test_features_that_make_every_photo_alike_list_a_few_pairs_per_image_and_say_so(monkeypatch):
    """Random-weights features: most pairs pass the threshold. All are counted; each image's closest few are
    listed (every image among them), not a share of the N^2 / 2 pairs; the report warns about the threshold."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 50)
    features = (1.0 + 0.05 * rng.normal(size=(len(labels), 16))).astype(np.float32)  # all nearly parallel
    images = _images(features, labels)
    pairs, _, total = quality.neighbourhoods(images, threshold=0.9)
    cross = sum(images.splits[a] != images.splits[b] for a in range(len(labels)) for b in range(a + 1, len(labels)))
    assert total == cross, "every pair across splits is counted"
    assert len(pairs) <= quality.PAIRS_PER_IMAGE * len(labels) < total
    assert {index for pair in pairs for index in pair[:2]} == set(range(len(labels))), "every image is listed"
    for image in (0, 1, 2):  # each image's listed partners are its most similar ones in other splits
        unit = quality.unit_rows(images.features)
        others = [j for j in range(len(labels)) if images.splits[j] != images.splits[image]]
        expected = sorted(others, key=lambda j: -float(unit[image] @ unit[j]))[: quality.PAIRS_PER_IMAGE]
        listed = {b if a == image else a for a, b, _ in pairs if image in (a, b)}
        assert set(expected) <= listed
    monkeypatch.setattr(quality, "BLOCK", 7)
    blockwise = quality.neighbourhoods(images, threshold=0.9)[0]
    # The same pairs, their similarities equal to rounding: a block's product may take another BLAS kernel.
    assert {(a, b) for a, b, _ in blockwise} == {(a, b) for a, b, _ in pairs}, "the same pairs, block by block"
    by_pair = {(a, b): similarity for a, b, similarity in pairs}
    for a, b, similarity in blockwise:
        assert similarity == pytest.approx(by_pair[a, b], abs=1e-5)

    report = quality.assess(images, folds=3, threshold=0.9, seed=0)
    assert quality.summary(images, report, 3, 0.9)["near_duplicate_pairs"] == total
    warning = quality.implausible_duplicates(images, report, 0.9)
    assert warning.startswith("200 of 200 images have a near-duplicate in another split at "
                              "quality.duplicate_similarity = 0.9"), warning
    clean = _images(*_clusters())
    assert quality.implausible_duplicates(clean, quality.assess(clean, 3, 0.98, 0), 0.98) is None


def test_accuracy_without_the_leaked_images():
    labels = np.array([0, 1, 1, 0])
    predicted = np.array([0, 1, 0, 0])
    assert quality.accuracy_without(labels, predicted, []) == 0.75
    assert quality.accuracy_without(labels, predicted, [2]) == 1.0
    assert quality.accuracy_without(labels, predicted, [0, 1, 2, 3]) is None


def test_the_cache_and_the_split_files_must_agree():
    features, labels = _clusters(per_class=5)
    with pytest.raises(DataError, match="run extract-features again"):
        quality.gather({"train": (features, labels)}, {"train": ["one.png"]}, CLASSES)


def _photos(root, files):
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (200, 30, 30)).save(path)


def test_the_report_is_written_whole_with_its_galleries_and_metrics(tmp_path):
    features, truth = _clusters()
    given = truth.copy()
    given[[3, 70]] = [2, 0]
    images = _images(features, given)
    images.features[12] = features[10] * 1.01
    _photos(tmp_path / "raw", images.files)
    report = quality.assess(images, folds=5, threshold=0.98, seed=0)
    metrics = quality.summary(images, report, 5, 0.98)
    quality.write_report(images, report, tmp_path / "out", tmp_path / "raw", gallery=6, metrics=metrics)
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == [
        "label_issues.csv", "label_issues.png", "metrics.json", "near_duplicates.csv", "outliers.csv", "outliers.png"]
    issues = read_csv(out / "label_issues.csv")
    assert list(issues[0]) == quality.LABEL_ISSUE_COLUMNS
    assert [int(row["rank"]) for row in issues] == list(range(1, len(issues) + 1))
    assert sum(int(row["suspect"]) for row in issues) == metrics["label_issues"] == len(report.suspects)
    assert {images.files[3], images.files[70]} <= {row["file"] for row in issues[: metrics["label_issues"]]}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["leaked_test_images"] == 1 and saved["near_duplicate_pairs"] == 1
    assert saved["label_issues_train"] + saved["label_issues_val"] + saved["label_issues_test"] == saved["label_issues"]
    assert quality.leaked_test_files(out / "near_duplicates.csv") == {images.files[10]}
    assert quality.leaked_test_files(tmp_path / "missing.csv") is None, "no report: not checked, not 'none leaked'"


def test_with_the_report_off_the_folder_says_nothing_was_checked(tmp_path):
    out = tmp_path / "data_quality"
    quality.write_report_off(out)
    assert sorted(path.name for path in out.iterdir()) == ["label_issues.png", "metrics.json", "outliers.png"]
    assert json.loads((out / "metrics.json").read_text()) == {"checked": False}
    assert all((out / name).stat().st_size > 0 for name in ("label_issues.png", "outliers.png")), "DVC's plots"
    assert quality.leaked_test_files(out / quality.NEAR_DUPLICATES) is None
    with pytest.raises(UserError, match="holds no report: quality.report is false; set it to true"):
        quality.add_exclusions(out, tmp_path / "exclude.csv", ["train"], top=None, outliers=False)
    assert not (tmp_path / "exclude.csv").exists()


def test_names_that_would_run_as_formulas_are_written_as_text_and_read_back(tmp_path):
    features, labels = _clusters(per_class=8)
    images = _images(features, labels)
    images.files[0] = "=cmd.png"
    images.features[2] = features[0]  # a train copy of the test image =cmd.png
    pairs, _, _ = quality.neighbourhoods(images, threshold=0.999)
    rows = quality.duplicate_rows(images, pairs)
    assert rows[0][0] == "'=cmd.png"
    write_csv(tmp_path / "pairs.csv", quality.DUPLICATE_COLUMNS, rows)
    assert quality.leaked_test_files(tmp_path / "pairs.csv") == {"=cmd.png"}


# Curation: data.exclude and data.relabel, applied by split after the split is drawn.

SPLITS = {
    "train": [("a/1.png", "a"), ("a/2.png", "a"), ("b/1.png", "b"), ("b/2.png", "b")],
    "val": [("a/3.png", "a"), ("b/3.png", "b")],
    "test": [("a/4.png", "a"), ("b/4.png", "b"), ("b/=5.png", "b")],
}


def _curation(tmp_path, excluded=(), relabelled=(), exclude_header=("file",)):
    exclude, relabel = tmp_path / "exclude.csv", tmp_path / "relabel.csv"
    write_csv(exclude, exclude_header, [[name, *([""] * (len(exclude_header) - 1))] for name in excluded])
    write_csv(relabel, ["file", "label"], relabelled)
    return exclude, relabel


def test_header_only_files_change_nothing(tmp_path):
    curated, report = curate(SPLITS, ["a", "b"], *_curation(tmp_path))
    assert curated == SPLITS
    assert report["excluded"] == {"train": 0, "val": 0, "test": 0} and report["excluded_files"] == []


def test_excluded_and_relabelled_images_leave_every_other_image_in_its_split(tmp_path):
    exclude, relabel = _curation(tmp_path, excluded=["a/2.png", "b/4.png", spreadsheet_safe("b/=5.png")],
                                 relabelled=[["b/1.png", "a"], ["a/3.png", "b"], ["a/2.png", "b"]])
    curated, report = curate(SPLITS, ["a", "b"], exclude, relabel)
    assert curated == {
        "train": [("a/1.png", "a"), ("b/1.png", "a"), ("b/2.png", "b")],
        "val": [("a/3.png", "b"), ("b/3.png", "b")],
        "test": [("a/4.png", "a")],
    }
    assert report["excluded"] == {"train": 1, "val": 0, "test": 2}
    assert report["relabelled"] == {"train": 1, "val": 1, "test": 0}, "a/2.png is excluded: not relabelled"
    assert {row["path"] for row in report["excluded_files"]} == {"a/2.png", "b/4.png", "b/=5.png"}


def test_rows_pasted_from_the_label_issue_report_exclude_their_files(tmp_path):
    exclude, relabel = _curation(tmp_path, excluded=["a/1.png"], exclude_header=quality.LABEL_ISSUE_COLUMNS[1:])
    curated, _ = curate(SPLITS, ["a", "b"], exclude, relabel)
    assert ("a/1.png", "a") not in curated["train"]


@pytest.mark.parametrize(
    ("excluded", "relabelled", "message"),
    [
        (["a/9.png"], [], r"names 1 file\(s\) that are not images of this data set: a/9.png"),
        ([], [["a/1.png", "z"]], r"relabelled 'z', which is not a class; the classes are a, b"),
        ([], [["a/1.png", "b"], ["a/1.png", "a"]], "is given two labels"),
        (["b/1.png", "b/2.png"], [], r"class\(es\) b have no training image"),
    ],
)
def test_bad_curation_rows_are_refused_with_what_is_wrong(tmp_path, excluded, relabelled, message):
    with pytest.raises(DataError, match=message):
        curate(SPLITS, ["a", "b"], *_curation(tmp_path, excluded, relabelled))


def test_a_missing_file_or_column_is_refused(tmp_path):
    exclude, relabel = _curation(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        curate(SPLITS, ["a", "b"], tmp_path / "nope.csv", relabel)
    (tmp_path / "bad.csv").write_text("path,label\na/1.png,a\n")
    with pytest.raises(DataError, match="has no 'file' column; its header is path,label"):
        curate(SPLITS, ["a", "b"], exclude, tmp_path / "bad.csv")
    (tmp_path / "binary.csv").write_bytes(b"file\n\xff\xfe\n")
    with pytest.raises(DataError, match="cannot be read as a UTF-8 CSV"):
        curate(SPLITS, ["a", "b"], tmp_path / "binary.csv", relabel)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("quality.folds", 1, r"quality.folds = 1 is invalid: expected an integer in \[2, 100\]"),
        ("quality.duplicate_similarity", 1.5, r"expected a number in \[0.5, 1.0\]"),
        ("quality.gallery", -1, r"expected an integer in \[0, 200\]"),
        ("quality.report", "no", r"quality.report = 'no' is invalid: expected true or false"),
        ("data.exclude", None, "the path of a CSV file"),
    ],
)
def test_bad_quality_and_curation_params_name_the_key(params_tree, key, value, message):
    section, leaf = key.split(".")
    params_tree[section][leaf] = value
    params = Params(params_tree)
    with pytest.raises(ParamError, match=message):
        read_quality(params)
        read_curation(params)


def test_the_exclude_command_adds_the_chosen_suspects_once_and_keeps_what_was_there(tmp_path, capsys):
    from transfer.cli import main

    report = tmp_path / "report"
    report.mkdir()
    columns = quality.LABEL_ISSUE_COLUMNS
    write_csv(report / "label_issues.csv", columns, [
        [1, "a/1.png", "train", "a", "b", 0.01, 0.9, 1],
        [2, "'=b.png", "test", "b", "a", 0.02, 0.9, 1],
        [3, "a/3.png", "val", "a", "b", 0.03, 0.8, 1],
        [4, "a/4.png", "train", "a", "b", 0.2, 0.7, 0],
    ])
    write_csv(report / "outliers.csv", quality.OUTLIER_COLUMNS, [[1, "b/9.png", "train", "b", 0.7, "a"]])
    exclude = tmp_path / "exclude.csv"
    write_csv(exclude, ["file", "why"], [["a/3.png", "reviewed"]])
    assert main(["exclude", "--report", str(report), "--file", str(exclude)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
    assert read_csv(exclude) == [{"file": "a/3.png", "why": "reviewed"}, {"file": "a/1.png", "why": ""}]
    assert main(["exclude", "--report", str(report), "--file", str(exclude), "--splits", "train,val,test",
                 "--top", "4", "--outliers"]) == 0
    assert [row["file"] for row in read_csv(exclude)] == ["a/3.png", "a/1.png", "'=b.png", "a/4.png", "b/9.png"]
    splits = {"train": [("a/1.png", "a"), ("a/4.png", "a"), ("b/9.png", "b"), ("b/8.png", "b"), ("a/5.png", "a")],
              "val": [("a/3.png", "a")], "test": [("=b.png", "b")]}
    write_csv(tmp_path / "relabel.csv", ["file", "label"], [])
    curated, _ = curate(splits, ["a", "b"], exclude, tmp_path / "relabel.csv")
    assert curated == {"train": [("b/8.png", "b"), ("a/5.png", "a")], "val": [], "test": []}
    assert main(["exclude", "--report", str(report), "--file", str(exclude), "--splits", "tain"]) == 2
    assert "--splits tain is invalid: expected some of train, val, test" in capsys.readouterr().err
    assert main(["exclude", "--report", str(tmp_path / "none"), "--file", str(exclude)]) == 2
    assert "run the pipeline (dvc repro) first" in capsys.readouterr().err
