"""data.source as a folder, an archive or a URL; hostile and broken archives are refused."""

import hashlib
import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from transfer.errors import DataError
from transfer.sources import fetch


def _tgz(path: Path, folder: Path, top: str = "flower_photos") -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        bundle.add(folder, arcname=top)
    return path


def _classes(target: Path) -> dict[str, int]:
    return {child.name: len(list(child.iterdir())) for child in sorted(target.iterdir())}


def test_a_folder_is_copied_without_hidden_entries(shapes_folder, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(shapes_folder, source)
    (source / ".ipynb_checkpoints").mkdir()
    (source / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"")
    (source / "circle" / ".DS_Store").write_bytes(b"junk")
    classes = fetch(str(source), None, tmp_path / "raw")
    assert classes == ["circle", "square", "triangle"]
    assert _classes(tmp_path / "raw") == {"circle": 20, "square": 20, "triangle": 20}


def test_an_archive_with_a_top_folder_and_a_license_file(shapes_folder, tmp_path):
    staged = tmp_path / "staged"
    shutil.copytree(shapes_folder, staged)
    (staged / "LICENSE.txt").write_text("photos under CC-BY")
    archive = _tgz(tmp_path / "photos.tgz", staged)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert fetch(str(archive), digest, tmp_path / "raw") == ["circle", "square", "triangle"]


def test_a_zip_archive(shapes_folder, tmp_path):
    archive = Path(shutil.make_archive(str(tmp_path / "photos"), "zip", shapes_folder))
    assert fetch(str(archive), None, tmp_path / "raw") == ["circle", "square", "triangle"]


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(shapes_folder, tmp_path):
    archive = _tgz(tmp_path / "photos.tgz", shapes_folder)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(str(archive), "0" * 64, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_broken_archive_is_a_clear_error(shapes_folder, tmp_path):
    archive = _tgz(tmp_path / "photos.tgz", shapes_folder)
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="is broken"):
        fetch(str(truncated), None, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/absolute-escape.txt"])
def test_members_outside_the_target_are_refused(tmp_path, member):
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as bundle:
        info = tarfile.TarInfo(member)
        info.size = 4
        bundle.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="outside the target"):
        fetch(str(archive), None, tmp_path / "data" / "raw")
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()


def test_a_symlink_out_of_the_target_is_refused(tmp_path):
    archive = tmp_path / "hostile.zip.tar"
    with tarfile.open(archive, "w") as bundle:
        info = tarfile.TarInfo("photos/cats/link.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../../etc/passwd"
        bundle.addfile(info)
    with pytest.raises(DataError, match="outside the target"):
        fetch(str(archive), None, tmp_path / "raw")


def test_a_zip_with_a_parent_member_is_refused(tmp_path):
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../escape.txt", "evil")
    with pytest.raises(DataError, match="outside the target"):
        fetch(str(archive), None, tmp_path / "raw")


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(DataError, match="data.source = 'nowhere.tgz' is invalid"):
        fetch("nowhere.tgz", None, tmp_path / "raw")


def test_a_url_is_downloaded_and_checked(shapes_folder, tmp_path):
    (tmp_path / "served").mkdir()
    archive = _tgz(tmp_path / "served" / "photos.tgz", shapes_folder)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path / "served"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/photos.tgz"
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert fetch(url, digest, tmp_path / "raw") == ["circle", "square", "triangle"]
    finally:
        server.shutdown()
