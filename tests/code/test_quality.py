"""The data-quality report on generated features, and the curation files split applies."""

import json

import numpy as np
import pytest
from PIL import Image

from transfer.data import catalog, duplicates, quality, quality_report
from transfer.data.splits import curate
from transfer.errors import DataError, ParamError, UserError
from transfer.io import read_csv, spreadsheet_safe, write_csv
from transfer.params import Params
from transfer.schema import read_curation, read_quality

CLASSES = ["a", "b", "c", "d"]


def _clusters(per_class: int = 60, dim: int = 32, spread: float = 0.6, seed: int = 0):
    """Features of four classes around random centres (separable, with overlap at the edges), and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), dim)) * 2
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    features = centres[labels] + rng.normal(scale=spread * 2, size=(len(labels), dim))
    return features.astype(np.float32), labels


def _images(features, labels, test_every: int = 5) -> catalog.Images:
    """Every ``test_every``-th image in test, the next in val, the rest in train."""
    positions = np.arange(len(labels))
    splits = np.where(positions % test_every == 0, "test", np.where(positions % test_every == 1, "val", "train"))
    files = [f"{CLASSES[label]}/{i:04d}.png" for i, label in enumerate(labels)]
    return catalog.Images(files=files, splits=splits, labels=np.asarray(labels), features=features,
                          classes=CLASSES, thumbnails=np.array(features, dtype=np.float32))


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


def test_the_folds_fit_in_parallel_processes_only_on_a_large_set_and_give_the_same_probabilities(monkeypatch):
    import sklearn.model_selection

    jobs = []
    fit = sklearn.model_selection.cross_val_predict

    def spy(*args, **kwargs):
        jobs.append(kwargs["n_jobs"])
        return fit(*args, **kwargs)

    monkeypatch.setattr(sklearn.model_selection, "cross_val_predict", spy)
    monkeypatch.setattr(quality, "cpu_count", lambda: 2)
    features, labels = _clusters()
    alone = quality.out_of_fold_probabilities(features, labels, len(CLASSES), folds=5, seed=0)
    # As if these 240 x 32 values were a large set: starting the processes then pays for itself.
    monkeypatch.setattr(quality, "PARALLEL_FOLDS_FROM", features.size)
    together = quality.out_of_fold_probabilities(features, labels, len(CLASSES), folds=5, seed=0)
    assert jobs == [1, 2]
    assert np.array_equal(alone, together)


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
    for vectors in (images.features, images.thumbnails):
        vectors[12] = vectors[test_row] * 1.02 + 0.01  # train: a re-encoded copy, nearly the same
        vectors[13] = vectors[12]  # train: an exact copy of that, in the same split
    pairs, total = duplicates.near_duplicates(images, ratio=0.2)
    assert {(a, b) for a, b, *_ in pairs} == {(test_row, 12), (test_row, 13)} and total == 2
    assert all(similarity >= 0.99 for _, _, similarity, _ in pairs)
    assert duplicates.leaked(images, pairs, "test").tolist() == [test_row]
    rows = quality_report.duplicate_rows(images, pairs)
    assert {row[-1] for row in rows} == {"train-test"} and rows[0][1] == "test"
    scores = quality.outlier_scores(images)
    assert scores.shape == (len(labels),)
    # The copies themselves are not outliers: each has a close neighbour.
    assert scores[12] < np.median(scores) and scores[13] < np.median(scores)


def _plain_background(count: int, seed: int = 0) -> np.ndarray:
    """Thumbnails of objects on one plain background: a large part every image shares, and a small part
    (the object: where it is, its shape and colours) of its own."""
    rng = np.random.default_rng(seed)
    background = rng.uniform(150, 220, 768)
    return (background + 6 * rng.normal(size=(count, 768))).astype(np.float32)


def test_a_plain_background_makes_no_pair_a_near_duplicate_but_copies_still_are():
    """The hand-signs case: every raw thumbnail (as every feature vector) alike. Judged against the data's own
    spread, different images are not near; re-encoded copies (a little noise) of ten images still are."""
    labels = np.repeat(np.arange(len(CLASSES)), 100)
    thumbs = _plain_background(len(labels))
    images = _images(thumbs, labels)
    raw = catalog.unit_rows(thumbs)
    assert (raw @ raw.T).min() > 0.99, "as alike as a fixed cosine threshold sees them"
    pairs, total = duplicates.near_duplicates(images, ratio=0.2)
    assert total == 0 and pairs == []

    originals = np.arange(0, 100, 10)  # test images (every 5th row)
    copies = originals + 2  # train rows
    rng = np.random.default_rng(1)
    images.thumbnails[copies] = images.thumbnails[originals] + rng.normal(scale=0.5, size=(len(copies), 768))
    pairs, total = duplicates.near_duplicates(images, ratio=0.2)
    assert {(a, b) for a, b, *_ in pairs} == set(zip(originals.tolist(), copies.tolist(), strict=True))
    assert total == len(copies) and all(ratio <= 0.2 for *_, ratio in pairs)


def test_many_copies_of_one_picture_are_all_near_duplicates():
    """A cluster of copies: each one's usual neighbours are copies too, so only 'one picture' finds them."""
    features, labels = _clusters(per_class=20)
    images = _images(features, labels)
    images.thumbnails[:12] = images.thumbnails[0]  # 12 copies across the three splits
    pairs, total = duplicates.near_duplicates(images, ratio=0.2)
    cross = sum(images.splits[a] != images.splits[b] for a in range(12) for b in range(a + 1, 12))
    assert total == cross and {index for pair in pairs for index in pair[:2]} == set(range(12))


def test_an_image_far_from_every_class_is_the_first_outlier():
    features, labels = _clusters()
    features[7] = np.full(features.shape[1], 40.0) * np.sign(np.arange(features.shape[1]) % 2 - 0.5)
    images = _images(features, labels)
    flagged = quality.flagged_outliers(quality.outlier_scores(images))
    assert flagged[0] == 7
    assert len(flagged) < len(labels) // 10


def test_the_blocked_passes_match_the_whole_matrix(monkeypatch):
    features, labels = _clusters(per_class=25)
    images = _images(features, labels)
    images.thumbnails[5] = images.thumbnails[6] * 1.01
    whole = duplicates.near_duplicates(images, ratio=0.5), quality.outlier_scores(images)
    monkeypatch.setattr(catalog, "BLOCK", 7)
    blocked = duplicates.near_duplicates(images, ratio=0.5), quality.outlier_scores(images)
    assert whole[0][1] == blocked[0][1] > 0
    assert [pair[:2] for pair in whole[0][0]] == [pair[:2] for pair in blocked[0][0]]
    np.testing.assert_allclose([pair[2:] for pair in whole[0][0]], [pair[2:] for pair in blocked[0][0]], atol=1e-5)
    assert np.allclose(whole[1], blocked[1])


def test_when_most_images_pair_up_a_few_pairs_per_image_are_listed_and_the_report_says_so():
    """Two pictures, each copied a hundred times: every pair of copies across splits is counted; each image's
    closest few are listed (every image among them), not a share of the N^2 / 2 pairs; the report warns."""
    labels = np.repeat(np.arange(len(CLASSES)), 50)
    features, _ = _clusters(per_class=50)
    images = _images(features, labels)
    images.thumbnails[:] = np.where((np.arange(len(labels)) % 2 == 0)[:, None], images.thumbnails[0],
                                    images.thumbnails[1])
    pairs, total = duplicates.near_duplicates(images, ratio=0.2)
    same = np.arange(len(labels)) % 2
    cross = sum(images.splits[a] != images.splits[b] and same[a] == same[b]
                for a in range(len(labels)) for b in range(a + 1, len(labels)))
    assert total == cross, "every pair across splits is counted"
    assert len(pairs) <= duplicates.PAIRS_PER_IMAGE * len(labels) < total
    assert {index for pair in pairs for index in pair[:2]} == set(range(len(labels))), "every image is listed"

    report = quality.assess(images, folds=3, ratio=0.2, seed=0)
    assert quality_report.summary(images, report)["near_duplicate_pairs"] == total
    warning = quality.implausible_duplicates(images, report)
    assert warning.startswith("200 of 200 images have a near-duplicate in another split at "
                              "quality.duplicate_ratio = 0.2"), warning
    clean = _images(*_clusters())
    assert quality.implausible_duplicates(clean, quality.assess(clean, 3, 0.2, 0)) is None


def test_thumbnails_see_through_resizing_re_encoding_mirroring_and_exif_rotation(tmp_path):
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    pixels = (rng.uniform(0, 255, (12, 9, 3))).astype(np.uint8)
    photo = Image.fromarray(pixels).resize((360, 270), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "photo.jpg", quality=92)
    photo.resize((288, 216)).save(tmp_path / "copy.jpg", quality=70)
    ImageOps.mirror(photo).save(tmp_path / "mirror.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown upright after a quarter turn
    photo.rotate(90, expand=True).save(tmp_path / "rotated.jpg", quality=92, exif=exif)
    names = ["photo.jpg", "copy.jpg", "mirror.png", "rotated.jpg"]
    for number in range(20):  # other photos, whose mean thumbnail is taken out as the report does
        other = Image.fromarray(rng.uniform(0, 255, (12, 9, 3)).astype(np.uint8)).resize((360, 270))
        other.save(tmp_path / f"other_{number}.jpg", quality=92)
        names.append(f"other_{number}.jpg")
    thumbs = catalog.thumbnails([tmp_path / name for name in names])
    assert thumbs.shape == (24, catalog.THUMBNAIL * catalog.THUMBNAIL * 3) and thumbs.dtype == np.float32
    unit = catalog.unit_rows(thumbs - thumbs.mean(axis=0))
    similarity = unit @ unit[0]
    assert min(similarity[1:4]) > 0.98, similarity[:4]
    assert max(similarity[4:]) < 0.5, similarity[4:]
    assert catalog.thumbnails([]).shape == (0, catalog.THUMBNAIL * catalog.THUMBNAIL * 3)


def test_accuracy_without_the_leaked_images():
    labels = np.array([0, 1, 1, 0])
    predicted = np.array([0, 1, 0, 0])
    assert quality.accuracy_without(labels, predicted, []) == 0.75
    assert quality.accuracy_without(labels, predicted, [2]) == 1.0
    assert quality.accuracy_without(labels, predicted, [0, 1, 2, 3]) is None


def test_the_cache_and_the_split_files_must_agree():
    features, labels = _clusters(per_class=5)
    with pytest.raises(DataError, match="run extract-features again"):
        catalog.gather({"train": (features, labels)}, {"train": ["one.png"]}, CLASSES)


def test_a_copy_among_copies_is_listed_as_one_picture_with_no_ratio():
    """Six exact copies in train leave each other no spread (their 5th-nearest is a copy): a slightly changed
    seventh copy in test is near by the one-picture rule alone, so its ratio is not a number, and its CSV cell
    empty, never a 0.0 that would read as identical."""
    features, labels = _clusters(per_class=20)
    images = _images(features, labels)
    train = np.flatnonzero(images.splits == "train")[:6]
    test = int(np.flatnonzero(images.splits == "test")[0])
    images.thumbnails[train] = images.thumbnails[train[0]]
    images.thumbnails[test] = images.thumbnails[train[0]] + 0.003 * np.random.default_rng(0).standard_normal(
        images.thumbnails.shape[1])
    pairs, _ = duplicates.near_duplicates(images, ratio=0.2)
    with_test = [pair for pair in pairs if test in pair[:2] and {pair[0], pair[1]} & set(train.tolist())]
    assert with_test and all(pair[2] >= duplicates.SAME_PICTURE and np.isnan(pair[3]) for pair in with_test)
    rows = quality_report.duplicate_rows(images, with_test)
    assert {row[quality_report.DUPLICATE_COLUMNS.index("ratio")] for row in rows} == {""}


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
    images.thumbnails[12] = images.thumbnails[10] * 1.01
    _photos(tmp_path / "raw", images.files)
    report = quality.assess(images, folds=5, ratio=0.2, seed=0)
    metrics = quality_report.summary(images, report)
    quality_report.write_report(images, report, tmp_path / "out", tmp_path / "raw", gallery=6, metrics=metrics)
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == [
        "label_issues.csv", "label_issues.png", "metrics.json", "near_duplicates.csv", "outliers.csv", "outliers.png"]
    issues = read_csv(out / "label_issues.csv")
    assert list(issues[0]) == quality_report.LABEL_ISSUE_COLUMNS
    assert [int(row["rank"]) for row in issues] == list(range(1, len(issues) + 1))
    assert sum(int(row["suspect"]) for row in issues) == metrics["label_issues"] == len(report.suspects)
    assert {images.files[3], images.files[70]} <= {row["file"] for row in issues[: metrics["label_issues"]]}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["leaked_test_images"] == 1 and saved["near_duplicate_pairs"] == 1
    assert saved["label_issues_train"] + saved["label_issues_val"] + saved["label_issues_test"] == saved["label_issues"]
    assert quality_report.leaked_test_files(out / "near_duplicates.csv") == {images.files[10]}
    assert quality_report.leaked_test_files(tmp_path / "missing.csv") is None, (
        "no report: not checked, not 'none leaked'")


def test_with_the_report_off_the_folder_says_nothing_was_checked(tmp_path):
    out = tmp_path / "data_quality"
    quality_report.write_report_off(out)
    assert sorted(path.name for path in out.iterdir()) == ["label_issues.png", "metrics.json", "outliers.png"]
    assert json.loads((out / "metrics.json").read_text()) == {"checked": False}
    assert all((out / name).stat().st_size > 0 for name in ("label_issues.png", "outliers.png")), "DVC's plots"
    assert quality_report.leaked_test_files(out / quality.NEAR_DUPLICATES) is None
    with pytest.raises(UserError, match="holds no report: quality.report is false; set it to true"):
        quality_report.add_exclusions(out, tmp_path / "exclude.csv", ["train"], top=None, outliers=False)
    assert not (tmp_path / "exclude.csv").exists()


def test_names_that_would_run_as_formulas_are_written_as_text_and_read_back(tmp_path):
    features, labels = _clusters(per_class=8)
    images = _images(features, labels)
    images.files[0] = "=cmd.png"
    images.thumbnails[2] = images.thumbnails[0]  # a train copy of the test image =cmd.png
    pairs, _ = duplicates.near_duplicates(images, ratio=0.2)
    rows = quality_report.duplicate_rows(images, pairs)
    assert rows[0][0] == "'=cmd.png"
    write_csv(tmp_path / "pairs.csv", quality_report.DUPLICATE_COLUMNS, rows)
    assert quality_report.leaked_test_files(tmp_path / "pairs.csv") == {"=cmd.png"}


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
    exclude, relabel = _curation(tmp_path, excluded=["a/1.png"], exclude_header=quality_report.LABEL_ISSUE_COLUMNS[1:])
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
        ("quality.duplicate_ratio", 1.5, r"expected a number in \[0.0, 1.0\]"),
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
    columns = quality_report.LABEL_ISSUE_COLUMNS
    write_csv(report / "label_issues.csv", columns, [
        [1, "a/1.png", "train", "a", "b", 0.01, 0.9, 1],
        [2, "'=b.png", "test", "b", "a", 0.02, 0.9, 1],
        [3, "a/3.png", "val", "a", "b", 0.03, 0.8, 1],
        [4, "a/4.png", "train", "a", "b", 0.2, 0.7, 0],
    ])
    write_csv(report / "outliers.csv", quality_report.OUTLIER_COLUMNS, [[1, "b/9.png", "train", "b", 0.7, "a"]])
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
