"""download.py against a tiny archive served from 127.0.0.1: mirrors, md5, resume, safe
extraction, the completion marker."""

from cli import UserError

import dataclasses
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import download
from dataset import voc_dataset
from download import download_source, is_complete, safe_extract
from synthetic import make_fake_voc
from voc import COMPLETE_MARKER, VOC


class ArchiveServer:
    """Serves {path: bytes} from 127.0.0.1, honouring Range requests like a real mirror (or
    ignoring them, like some servers, with honour_range=False), and saying each body's length
    (or not, as a server that streams may not, with send_length=False)."""

    def __init__(self, files: dict, honour_range: bool = True, send_length: bool = True):
        self.files, self.ranges, self.honour_range = files, [], honour_range
        self.send_length = send_length
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if "Range" in self.headers and server.honour_range:
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    server.ranges.append(start)
                    if start >= len(body):  # nothing left: what HTTP servers answer
                        self.send_error(416)
                        return
                self.send_response(206 if start else 200)
                if server.send_length:
                    self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"


@pytest.fixture
def server():
    servers = []
    yield lambda files, **kw: servers.append(ArchiveServer(files, **kw)) or servers[-1]
    for s in servers:
        s.httpd.shutdown()


def voc_from(mirrors: list, md5: str):
    """VOC's Source with other mirrors and md5: the real download code, a local server."""
    return dataclasses.replace(VOC, mirrors=tuple(mirrors), md5=md5)


def tar_bytes(members: dict) -> bytes:
    """A tar archive of {member name: content}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def tiny_voc_tar(tmp_path) -> bytes:
    """A VOC archive of 2 images; like the real one, without our completion marker."""
    make_fake_voc(tmp_path / "src", num_images=2)
    files = sorted(
        p for p in (tmp_path / "src").rglob("*") if p.is_file() and p.name != COMPLETE_MARKER
    )
    return tar_bytes({str(p.relative_to(tmp_path / "src")): p.read_bytes() for p in files})


@pytest.mark.parametrize("send_length", [True, False])
def test_good_download_from_the_second_mirror_is_checked_and_extracted(
    tmp_path, server, capsys, send_length
):
    archive = tiny_voc_tar(tmp_path)
    srv = server({"/voc.tar": archive}, send_length=send_length)
    root = tmp_path / "new" / "data"  # folders made as needed
    urls = [srv.url("/missing.tar"), srv.url("/voc.tar")]
    download_source(root, voc_from(urls, hashlib.md5(archive).hexdigest()))
    assert len(voc_dataset(root, "train", None)) == 1 and len(voc_dataset(root, "val", None)) == 1
    assert (root / VOC.archive).exists() and not (root / (VOC.archive + ".part")).exists()
    out = capsys.readouterr().out
    assert all(f"downloading {url}" in out for url in urls)
    assert f"{VOC.name} ready under {root / VOC.subdir}" in out
    assert is_complete(VOC, root)  # marked: the next run has nothing to do


def test_md5_mismatch_is_a_clear_error_and_leaves_no_partial_file(tmp_path, server):
    srv = server({"/voc.tar": tiny_voc_tar(tmp_path)})
    root = tmp_path / "data"
    with pytest.raises(UserError) as e:
        download_source(root, voc_from([srv.url("/voc.tar")], "0" * 32))
    assert "md5 mismatch" in str(e.value) and "by hand" in str(e.value)
    assert list(root.iterdir()) == []


def test_a_broken_download_resumes_with_a_range_request(tmp_path, server):
    archive = tiny_voc_tar(tmp_path)
    srv = server({"/voc.tar": archive})
    root = tmp_path / "data"
    root.mkdir()
    (root / (VOC.archive + ".part")).write_bytes(archive[:1000])  # what a dropped link left
    download_source(root, voc_from([srv.url("/voc.tar")], hashlib.md5(archive).hexdigest()))
    assert srv.ranges == [1000]
    assert (root / VOC.archive).read_bytes() == archive


def test_a_server_ignoring_range_gets_the_download_restarted_from_zero(tmp_path, server):
    archive = tiny_voc_tar(tmp_path)
    srv = server({"/voc.tar": archive}, honour_range=False)
    root = tmp_path / "data"
    root.mkdir()
    (root / (VOC.archive + ".part")).write_bytes(b"stale bytes of another attempt")
    download_source(root, voc_from([srv.url("/voc.tar")], hashlib.md5(archive).hexdigest()))
    assert (root / VOC.archive).read_bytes() == archive


def test_an_extracted_dataset_is_used_as_is_without_the_network(tmp_path, capsys):
    make_fake_voc(tmp_path, num_images=4)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    download_source(tmp_path, voc_from(["http://example.invalid/never-used"], "0" * 32))
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no archive
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / VOC.archive).exists()


def test_a_manually_placed_archive_is_used_without_the_network(tmp_path, capsys):
    archive = tiny_voc_tar(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    (root / VOC.archive).write_bytes(archive)
    download_source(
        root, voc_from(["http://example.invalid/never-used"], hashlib.md5(archive).hexdigest())
    )
    assert len(voc_dataset(root, "val", None)) == 1
    assert f"found {root / VOC.archive}, checking its md5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "evil", ["../escaped.txt", "/tmp/absolute_escape.txt", "VOCdevkit/../../escaped.txt"]
)
def test_archive_members_escaping_the_target_are_refused(tmp_path, evil):
    (tmp_path / "evil.tar").write_bytes(tar_bytes({"VOCdevkit/ok.txt": b"ok", evil: b"x"}))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UserError) as e:
        safe_extract(tmp_path / "evil.tar", target)
    assert "escapes" in str(e.value)
    assert list(target.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_an_interrupted_extraction_is_not_taken_for_a_dataset_and_is_redone(tmp_path, capsys):
    archive = tiny_voc_tar(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    (root / VOC.archive).write_bytes(archive)
    source = voc_from(["http://example.invalid/never-used"], hashlib.md5(archive).hexdigest())
    download_source(root, source)
    masks = sorted((root / VOC.subdir / "SegmentationClass").glob("*.png"))
    masks[0].unlink()  # what Ctrl+C in the middle of the extraction leaves:
    (root / VOC.subdir / COMPLETE_MARKER).unlink()  # part of the files, no marker
    assert not is_complete(VOC, root)
    capsys.readouterr()
    download_source(root, source)
    assert masks[0].exists() and is_complete(VOC, root)
    assert "has no completion marker (an interrupted extraction?)" in capsys.readouterr().out


def test_a_placed_archive_with_the_wrong_md5_is_refused_before_extraction(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / VOC.archive).write_bytes(tiny_voc_tar(tmp_path))
    with pytest.raises(UserError, match="wrong md5"):
        download_source(root, voc_from(["http://example.invalid/never-used"], "0" * 32))
    assert sorted(p.name for p in root.iterdir()) == [VOC.archive]  # nothing extracted


def test_an_archive_with_a_link_member_is_refused_with_nothing_written(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("VOCdevkit/ok.txt"), io.BytesIO(b""))
        link = tarfile.TarInfo("VOCdevkit/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "links.tar").write_bytes(buffer.getvalue())
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UserError, match="is not a regular file"):
        safe_extract(tmp_path / "links.tar", target)
    assert list(target.iterdir()) == []


def test_an_archive_without_the_voc_layout_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "other.tar").write_bytes(tar_bytes({"photos/a.jpg": b"x", "notes.txt": b"y"}))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UserError, match="holds no VOCdevkit/VOC2012/JPEGImages"):
        safe_extract(tmp_path / "other.tar", target, VOC)
    assert list(target.iterdir()) == []


def test_a_truncated_archive_is_one_error(tmp_path):
    archive = tiny_voc_tar(tmp_path)
    (tmp_path / "cut.tar").write_bytes(archive[: len(archive) // 2 + 100])
    with pytest.raises(UserError, match=r"cannot extract .*cut.tar .* \(unexpected end of data\)"):
        safe_extract(tmp_path / "cut.tar", tmp_path / "target", VOC)


def test_a_name_that_is_both_a_file_and_a_folder_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("VOCdevkit/x"), io.BytesIO(b""))
        folder = tarfile.TarInfo("VOCdevkit/x")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    (tmp_path / "both.tar").write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="is both a file and a folder"):
        safe_extract(tmp_path / "both.tar", tmp_path)


def test_a_part_file_already_whole_is_verified_and_extracted_then_marked_done(
    tmp_path, server, capsys
):
    """The server answers 416 (nothing left in range) for a complete .part; the archive is
    then checked, extracted and marked, and a second run has nothing to do."""
    archive = tiny_voc_tar(tmp_path)
    srv = server({"/voc.tar": archive})
    root = tmp_path / "data"
    root.mkdir()
    (root / (VOC.archive + ".part")).write_bytes(archive)
    source = voc_from([srv.url("/voc.tar")], hashlib.md5(archive).hexdigest())
    download_source(root, source)
    assert srv.ranges == [len(archive)] and (root / VOC.subdir / COMPLETE_MARKER).exists()
    capsys.readouterr()
    download_source(root, source)
    assert "nothing to do" in capsys.readouterr().out


def test_every_mirror_that_failed_is_named_in_the_error(tmp_path, server):
    srv = server({})
    urls = [srv.url("/a.tar"), srv.url("/b.tar")]
    with pytest.raises(UserError) as e:
        download_source(tmp_path / "data", voc_from(urls, "0" * 32))
    assert all(f"{url}: HTTP Error 404" in str(e.value) for url in urls)


def test_an_archive_beyond_the_caps_is_refused_before_extraction(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_MEMBERS", 3)
    (tmp_path / "many.tar").write_bytes(tar_bytes({f"VOCdevkit/{i}": b"" for i in range(4)}))
    with pytest.raises(UserError, match="more than 3 files"):
        safe_extract(tmp_path / "many.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(download, "MAX_MEMBERS", 10)
    monkeypatch.setattr(download, "MAX_BYTES", 5)
    (tmp_path / "big.tar").write_bytes(tar_bytes({"VOCdevkit/a": b"123456"}))
    with pytest.raises(UserError, match="or 5 bytes"):
        safe_extract(tmp_path / "big.tar", tmp_path / "out")
