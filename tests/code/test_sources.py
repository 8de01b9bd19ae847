"""data.source as a folder, an archive or a URL; hostile, broken and oversized archives are refused."""

import hashlib
import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from transfer.data import sources
from transfer.data.sources import fetch
from transfer.errors import DataError
from transfer.schema import DataParams


def _data(source, sha256=None, labels_csv=None, max_bytes=10**9) -> DataParams:
    return DataParams(source=str(source), sha256=sha256, labels_csv=labels_csv, max_bytes=max_bytes)


def _visible(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


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
    (source / "circle" / "gone.jpg").symlink_to("nowhere.jpg")  # dangling: no image
    classes = fetch(_data(source), tmp_path / "raw").classes
    assert classes == ["circle", "square", "triangle"]
    assert _classes(tmp_path / "raw") == {"circle": 20, "square": 20, "triangle": 20}


def test_a_class_folder_named_only_of_dots_is_listed_not_dropped_silently(shapes_folder, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(shapes_folder, source)
    shutil.copytree(source / "circle", source / "...")
    fetched = fetch(_data(source), tmp_path / "raw")
    assert fetched.classes == ["circle", "square", "triangle"]
    reasons = {row["path"]: row["reason"] for row in fetched.excluded}
    assert reasons["..."] == "a folder named only of dots is hidden, not a class; rename it"


def test_an_archive_with_a_top_folder_and_a_license_file(shapes_folder, tmp_path):
    staged = tmp_path / "staged"
    shutil.copytree(shapes_folder, staged)
    (staged / "LICENSE.txt").write_text("photos under CC-BY")
    archive = _tgz(tmp_path / "photos.tgz", staged)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert fetch(_data(archive, digest), tmp_path / "raw").classes == ["circle", "square", "triangle"]


def test_a_zip_archive(shapes_folder, tmp_path):
    archive = Path(shutil.make_archive(str(tmp_path / "photos"), "zip", shapes_folder))
    assert fetch(_data(archive), tmp_path / "raw").classes == ["circle", "square", "triangle"]


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(shapes_folder, tmp_path):
    archive = _tgz(tmp_path / "photos.tgz", shapes_folder)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(_data(archive, "0" * 64), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_broken_archive_is_a_clear_error(shapes_folder, tmp_path):
    archive = _tgz(tmp_path / "photos.tgz", shapes_folder)
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="is broken"):
        fetch(_data(truncated), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def _refused(data: DataParams, tmp_path: Path, match: str) -> None:
    """Fetch must fail with ``match`` and write nothing anywhere: no target, no scratch, no escaped file."""
    before = _visible(tmp_path)
    with pytest.raises(DataError, match=match) as caught:
        fetch(data, tmp_path / "project" / "data" / "raw")
    assert "\n" not in str(caught.value), "a refusal is one line"
    assert _visible(tmp_path) == sorted(set(before) | {"project", "project/data"})


def _tar(path: Path, *members: tarfile.TarInfo, payload: bytes = b"evil") -> Path:
    with tarfile.open(path, "w") as bundle:
        for member in members:
            bundle.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("photos/../../escape.txt"),
        _member("/tmp/absolute-escape.txt"),
        _member("photos/cats/link.jpg", tarfile.SYMTYPE, "../../../../etc/passwd"),
        _member("photos/cats/abs.jpg", tarfile.SYMTYPE, "/etc/passwd"),
        _member("photos/cats/hard.jpg", tarfile.LNKTYPE, "../outside.jpg"),
    ],
    ids=["parent", "absolute", "symlink-up", "symlink-absolute", "hardlink"],
)
def test_tar_members_outside_the_target_are_refused(tmp_path, member):
    archive = _tar(tmp_path / "hostile.tar", _member("photos/cats/ok.jpg"), member)
    wrong = "links outside the target" if member.linkname else "would be written outside the target"
    _refused(_data(archive), tmp_path, f"member '{member.name}' {wrong}")
    assert not Path("/tmp/absolute-escape.txt").exists()


def test_links_and_dots_that_stay_inside_are_fine(shapes_folder, tmp_path):
    archive = tmp_path / "photos.tar"
    with tarfile.open(archive, "w") as bundle:
        bundle.add(shapes_folder, arcname="photos")
        bundle.add(shapes_folder / "circle" / "circle_000.jpg", arcname="photos/./circle/../circle/extra.jpg")
        bundle.addfile(_member("photos/circle/alias.jpg", tarfile.SYMTYPE, "circle_002.jpg"))
    fetched = fetch(_data(archive), tmp_path / "raw")
    assert fetched.classes == ["circle", "square", "triangle"]
    assert (tmp_path / "raw/circle/alias.jpg").read_bytes() == (shapes_folder / "circle/circle_002.jpg").read_bytes()
    assert not (tmp_path / "raw/circle/alias.jpg").is_symlink(), "links are copied as files into data/raw"


def test_a_tar_device_member_is_refused(tmp_path):
    archive = _tar(tmp_path / "hostile.tar", _member("photos/cats/dev", tarfile.CHRTYPE))
    _refused(_data(archive), tmp_path, "is a device or pipe")


@pytest.mark.parametrize("name", ["../../escape.txt", "/abs-escape.txt", "photos\\..\\..\\escape.txt"])
def test_zip_members_outside_the_target_are_refused(tmp_path, name):
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("photos/cats/ok.jpg", "fine")
        bundle.writestr(zipfile.ZipInfo(name), "evil")
    _refused(_data(archive), tmp_path, "outside the target")


def test_an_archive_over_max_bytes_is_refused_before_unpacking(tmp_path):
    big = _tar(tmp_path / "big.tar", _member("photos/cats/a.jpg", size=600), _member("photos/dogs/b.jpg", size=600),
               payload=b"x" * 600)
    _refused(_data(big, max_bytes=1000), tmp_path, r"unpacks to 1200 bytes, over data.max_bytes = 1000")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("photos/cats/zeros.jpg", b"\0" * 5_000_000)  # a few kB on disk
    assert bomb.stat().st_size < 20_000
    _refused(_data(bomb, max_bytes=1_000_000), tmp_path, "unpacks to 5000000 bytes")


def test_a_truncated_zip_is_a_clear_error(shapes_folder, tmp_path):
    archive = Path(shutil.make_archive(str(tmp_path / "photos"), "zip", shapes_folder))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    _refused(_data(archive), tmp_path, "is broken or not a")


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(DataError, match="data.source = 'nowhere.tgz' is invalid"):
        fetch(_data("nowhere.tgz"), tmp_path / "raw")


def test_a_file_that_is_no_archive_is_named(tmp_path):
    (tmp_path / "photos.rar").write_bytes(b"Rar!")
    _refused(_data(tmp_path / "photos.rar"), tmp_path, r"data.source = '.*photos.rar' is invalid: expected a URL")


def test_one_class_folder_points_to_labels_csv(shapes_folder, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(shapes_folder / "circle", source / "all" / "circle")
    _refused(_data(source), tmp_path, "single class folder, 'circle'.*set data.labels_csv for a flat folder")


class _Server:
    """A loopback HTTP server for one file that cuts the first ``cuts`` responses off halfway."""

    def __init__(self, payload: bytes, cuts: int = 0):
        self.payload, self.cuts, self.requests = payload, cuts, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.payload)))
                self.end_headers()
                if outer.requests <= outer.cuts:
                    self.wfile.write(outer.payload[: len(outer.payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(outer.payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/photos.tgz"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(sources.time, "sleep", lambda seconds: None)


def test_a_url_is_downloaded_and_checked(shapes_folder, tmp_path, no_backoff):
    payload = _tgz(tmp_path / "photos.tgz", shapes_folder).read_bytes()
    with _Server(payload) as server:
        digest = hashlib.sha256(payload).hexdigest()
        assert fetch(_data(server.url, digest), tmp_path / "raw").classes == ["circle", "square", "triangle"]


def test_a_connection_cut_midway_is_retried(shapes_folder, tmp_path, no_backoff):
    payload = _tgz(tmp_path / "photos.tgz", shapes_folder).read_bytes()
    with _Server(payload, cuts=1) as server:
        assert fetch(_data(server.url), tmp_path / "raw").classes == ["circle", "square", "triangle"]
        assert server.requests == 2


def test_a_download_cut_every_time_is_never_taken_for_complete(shapes_folder, tmp_path, no_backoff):
    payload = _tgz(tmp_path / "photos.tgz", shapes_folder).read_bytes()
    with _Server(payload, cuts=99) as server:
        _refused(_data(server.url), tmp_path, f"cannot download data.source {server.url}")
        assert server.requests == sources.DOWNLOAD_ATTEMPTS


def test_an_unreachable_source_says_how_to_work_offline(tmp_path, no_backoff):
    _refused(_data("http://127.0.0.1:9/flower_photos.tgz"), tmp_path,
             r"cannot download data.source http://127.0.0.1:9/flower_photos.tgz: .*; offline, set data.source to a "
             r"local archive \(.tgz, .tar.gz, .tar, .zip\) or a folder with one subfolder per class")


def test_a_download_over_max_bytes_is_refused_without_retrying(tmp_path, no_backoff):
    with _Server(b"x" * 5000) as server:
        _refused(_data(server.url, max_bytes=4000), tmp_path, "is 5000 bytes, over data.max_bytes = 4000")
        assert server.requests == 1


def test_a_downloaded_checksum_mismatch_is_refused(shapes_folder, tmp_path, no_backoff):
    payload = _tgz(tmp_path / "photos.tgz", shapes_folder).read_bytes()
    with _Server(payload) as server:
        _refused(_data(server.url, "0" * 64), tmp_path, "checksum mismatch")


def test_links_in_a_source_folder_are_followed_only_to_files_inside_it(shapes_folder, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(shapes_folder, source)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(shapes_folder / "square/square_000.jpg", outside / "stray.jpg")
    circle = source / "circle"
    (circle / "alias.jpg").symlink_to("circle_002.jpg")  # a file inside: copied as that file
    (circle / "loop").symlink_to(".")  # followed, this went 40 levels deep
    (circle / "up").symlink_to("..")  # followed, this pulled in the whole tree again
    (circle / "stray.jpg").symlink_to(outside / "stray.jpg")
    (circle / "self.jpg").symlink_to("self.jpg")
    (source / "linked_class").symlink_to(outside)
    fetched = fetch(_data(source), tmp_path / "raw")
    assert fetched.classes == ["circle", "square", "triangle"]
    assert _classes(tmp_path / "raw") == {"circle": 21, "square": 20, "triangle": 20}
    assert (tmp_path / "raw/circle/alias.jpg").read_bytes() == (circle / "circle_002.jpg").read_bytes()
    reasons = {row["path"]: row["reason"] for row in fetched.excluded}
    assert set(reasons) == {"circle/loop", "circle/up", "circle/stray.jpg", "circle/self.jpg", "linked_class"}
    assert reasons["circle/loop"].startswith("a link to a folder: not followed")
    assert reasons["circle/stray.jpg"].startswith("a link that leads out of the source")
    assert reasons["circle/self.jpg"].startswith("a link that leads nowhere")


def test_a_source_folder_larger_than_max_bytes_is_refused(shapes_folder, tmp_path):
    with pytest.raises(DataError, match="more than data.max_bytes"):
        fetch(_data(shapes_folder, max_bytes=10_000), tmp_path / "raw")
    assert not (tmp_path / "raw").exists(), "nothing is left behind"


def test_a_single_class_is_named_as_such(shapes_folder, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(shapes_folder / "circle", source / "circle")
    with pytest.raises(DataError, match=r"a single class folder, 'circle' \(20 files\): a classifier needs at least"):
        fetch(_data(source), tmp_path / "raw")
