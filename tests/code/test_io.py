"""Outputs are written whole or not at all, and a killed writer's leftovers are cleared by the next one."""

import subprocess
import sys

import pytest

from transfer.io import atomic_path, remove_stale_temporaries, scratch_folder, write_json


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_failed_write_leaves_the_old_output(tmp_path):
    write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "metrics.json") as temporary:
        temporary.write_text("{half")
        raise RuntimeError("killed")
    assert (tmp_path / "metrics.json").read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_a_folder_output_is_replaced_whole(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "old.npy").write_text("old")
    with atomic_path(tmp_path / "features") as staging:
        staging.mkdir()
        (staging / "new.npy").write_text("new")
    assert [path.name for path in (tmp_path / "features").iterdir()] == ["new.npy"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["features"]


def test_temporaries_of_dead_writers_are_cleared_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".features.tmp{dead}").mkdir()
    (tmp_path / f".features.tmp{dead}" / "train_features.npy").write_bytes(b"half")
    (tmp_path / f".features.old{dead}").mkdir()
    (tmp_path / f".model.tmp{dead}.keras").write_bytes(b"half")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        (tmp_path / f".features.tmp{live.pid}").mkdir()
        removed = remove_stale_temporaries(tmp_path / "features")
        live.kill()
    assert sorted(path.name for path in removed) == [f".features.old{dead}", f".features.tmp{dead}"]
    assert (tmp_path / f".features.tmp{live.pid}").exists(), "another running writer's work is not touched"
    assert (tmp_path / f".model.tmp{dead}.keras").exists(), "only the output being written is swept"
    with atomic_path(tmp_path / "model.keras") as temporary:
        temporary.write_bytes(b"whole")
    assert not (tmp_path / f".model.tmp{dead}.keras").exists()


def test_a_scratch_folder_goes_away_whatever_happens(tmp_path):
    with pytest.raises(ValueError), scratch_folder(tmp_path / "raw-fetch") as scratch:
        (scratch / "download").write_bytes(b"partial")
        raise ValueError("connection reset")
    assert list(tmp_path.iterdir()) == []


def test_a_csv_saved_by_a_spreadsheet_with_a_byte_order_mark_reads_as_any_other(tmp_path):
    """curation/exclude.csv saved as "CSV UTF-8" starts with a BOM: split's reader took it, the data-quality
    report's (quality.add_exclusions, through read_csv) found "no 'file' column"."""
    from transfer.io import read_csv

    (tmp_path / "exclude.csv").write_bytes("\ufefffile,reason\nroses/1.jpg,blurred\n".encode())
    assert read_csv(tmp_path / "exclude.csv") == [{"file": "roses/1.jpg", "reason": "blurred"}]


def test_one_csv_reader_for_every_csv_with_a_bom_spaced_names_and_bad_bytes(tmp_path):
    from transfer.errors import DataError
    from transfer.io import read_table

    saved = tmp_path / "from_a_spreadsheet.csv"
    saved.write_bytes("\ufefffile , label\na.png,cat\n".encode())
    assert read_table(saved) == (["file", "label"], [{"file": "a.png", "label": "cat"}])
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"file\n\xff\xfe\n")
    with pytest.raises(DataError, match="binary.csv cannot be read as a UTF-8 CSV file"):
        read_table(binary)
