"""Tests for keras_caltech.data.download: offline, against an HTTP server on 127.0.0.1.

Each test builds a tiny archive (a few 8x8 JPEGs in NNN.name folders), serves it from
memory, and points the dataset's source at it, so the real download, resume, checksum
and extraction code runs without the internet.
"""

import dataclasses
import errno
import hashlib
import http.server
import io
import os
import re
import shutil
import socket
import tarfile
import threading
import types
import zipfile

import cv2
import numpy as np
import pytest

from keras_caltech.data import download, fetch
from keras_caltech.data.download import COMPLETE_MARKER, download_dataset
from keras_caltech.errors import UserError

CLASS_NAMES = ("001.ak47", "002.american-flag")
IMAGES_PER_CLASS = 2


class FileServer:
    """What the test HTTP server serves, and what it was asked for.

    Attributes:
        files: URL path -> file bytes.
        requests: (path, Range header or None) for every GET received.
        honour_range: answer a Range request with 206 and the tail (else 200, whole file).
        truncate_after: if set, send the full Content-Length but only this many bytes.
        sent_bytes: body bytes written, over all requests.
    """

    def __init__(self):
        self.files = {}
        self.requests = []
        self.honour_range = True
        self.truncate_after = None
        self.sent_bytes = 0
        self.base_url = ""

    def url(self, filename):
        # The query string mirrors the real CaltechDATA URLs; the handler ignores it.
        return f"{self.base_url}/{filename}?download=1"


@pytest.fixture
def server():
    """Serves FileServer.files on 127.0.0.1 from a background thread."""
    state = FileServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            range_header = self.headers.get("Range")
            path = self.path.split("?", 1)[0]
            state.requests.append((path, range_header))
            data = state.files.get(path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if range_header and state.honour_range:
                start = int(range_header.removeprefix("bytes=").split("-", 1)[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate_after is not None:
                body = body[:state.truncate_after]
            self.wfile.write(body)
            state.sent_bytes += len(body)

        def log_message(self, *args):
            pass  # keep pytest's captured output to our own progress lines

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # A short poll interval: shutdown() waits for it, once per test.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def tiny_jpeg(value):
    """Returns the bytes of an 8x8 JPEG filled with gray level ``value``."""
    ok, encoded = cv2.imencode(".jpg", np.full((8, 8, 3), value, np.uint8))
    assert ok
    return encoded.tobytes()


def add_member(archive, name, data=b"", member_type=tarfile.REGTYPE, linkname=""):
    """Adds one member to an open tarfile, written by hand so any name can be stored."""
    member = tarfile.TarInfo(name)
    member.type = member_type
    member.linkname = linkname
    member.size = len(data)
    member.mode = 0o644
    archive.addfile(member, io.BytesIO(data))


def class_images(root):
    """Returns {archive member name: JPEG bytes} for a tiny folder-per-class tree under ``root``."""
    return {f"{root}/{class_name}/{class_name[:3]}_{index + 1:04d}.jpg": tiny_jpeg(40 * index + 30)
            for class_name in CLASS_NAMES for index in range(IMAGES_PER_CLASS)}


def tar_bytes(root="256_ObjectCategories", extra=(), compression=""):
    """Returns a tar of the tiny tree plus ``extra`` members, each (name, data, type, linkname)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for name, data in class_images(root).items():
            add_member(archive, name, data)
        for member in extra:
            add_member(archive, *member)
    return buffer.getvalue()


def caltech101_zip_bytes(extra_names=()):
    """Returns a zip shaped like CaltechDATA's: caltech-101/ holding a tar.gz and annotations."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("caltech-101/101_ObjectCategories.tar.gz",
                         tar_bytes("101_ObjectCategories", compression="gz"))
        archive.writestr("caltech-101/Annotations.tar", tar_bytes("Annotations"))
        for name in extra_names:
            archive.writestr(name, b"escaped")
    return buffer.getvalue()


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


def serve_dataset(monkeypatch, server, name, data, md5=None):
    """Serves ``data`` as dataset ``name``'s archive and points its source (URL, md5) at it."""
    source = download.SOURCES[name]
    server.files[f"/{source.filename}"] = data
    local = dataclasses.replace(source, url=server.url(source.filename), md5=md5 or md5_hex(data))
    monkeypatch.setitem(download.SOURCES, name, local)
    return local


def extracted_files(root):
    """Returns the sorted relative paths of the image files under ``root``."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.jpg"))


EXPECTED_IMAGES = sorted(f"{class_name}/{class_name[:3]}_{index + 1:04d}.jpg"
                         for class_name in CLASS_NAMES for index in range(IMAGES_PER_CLASS))


def test_caltech256_is_downloaded_verified_and_extracted_to_its_class_folder(
        tmp_path, server, monkeypatch, capsys):
    serve_dataset(monkeypatch, server, "caltech256", tar_bytes())
    dest = tmp_path / "data"

    root = download_dataset("caltech256", dest)

    assert root == dest / "256_ObjectCategories"
    assert extracted_files(root) == EXPECTED_IMAGES
    assert cv2.imread(str(root / EXPECTED_IMAGES[0])).shape == (8, 8, 3)
    assert (root / COMPLETE_MARKER).is_file()
    # Only the dataset folder is left: no archive, .part or .extracting folder.
    assert sorted(path.name for path in dest.iterdir()) == ["256_ObjectCategories"]
    # A log (captured stderr is not a terminal) gets the final line even of a short download.
    lines = capsys.readouterr().err.splitlines()
    final_line = r"caltech256: 0\.0/0\.0 MB \(100%\)(, [\d.,]+ MB/s)?, took 0:00"  # a tiny archive
    assert len(lines) == 1 and re.fullmatch(final_line, lines[0]), lines


def test_caltech101_zip_with_a_nested_tar_gz_extracts_to_its_class_folder(
        tmp_path, server, monkeypatch):
    serve_dataset(monkeypatch, server, "caltech101", caltech101_zip_bytes())
    dest = tmp_path / "data"

    root = download_dataset("caltech101", dest, progress=False)

    assert root == dest / "101_ObjectCategories"
    assert extracted_files(root) == EXPECTED_IMAGES
    # The annotations and the inner tar.gz are not kept beside the dataset.
    assert sorted(path.name for path in dest.iterdir()) == ["101_ObjectCategories"]


def test_a_second_call_reuses_the_extracted_folder_without_any_request(
        tmp_path, server, monkeypatch):
    serve_dataset(monkeypatch, server, "caltech256", tar_bytes())
    dest = tmp_path / "data"
    first_root = download_dataset("caltech256", dest, progress=False)
    assert len(server.requests) == 1

    second_root = download_dataset("caltech256", dest, progress=False)

    assert second_root == first_root
    assert len(server.requests) == 1
    assert extracted_files(second_root) == EXPECTED_IMAGES


def test_a_tampered_archive_is_refused_with_both_md5s_and_nothing_is_kept(
        tmp_path, server, monkeypatch):
    original = tar_bytes()
    tampered = original[:-1] + b"\x01"  # tar padding byte: the archive would still extract
    serve_dataset(monkeypatch, server, "caltech256", tampered, md5=md5_hex(original))
    dest = tmp_path / "data"

    with pytest.raises(UserError, match="checksum mismatch") as error:
        download_dataset("caltech256", dest, progress=False)

    assert md5_hex(original) in str(error.value)
    assert md5_hex(tampered) in str(error.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("member, reason", [
    (("../escaped.jpg", b"escaped"), "unsafe path (parent-directory"),
    (("256_ObjectCategories/001.ak47/../../../escaped.jpg", b"escaped"), "unsafe path (parent-directory"),
    (("{tmp_path}/escaped.jpg", b"escaped"), "unsafe path (absolute path"),
    (("256_ObjectCategories/001.ak47/link", b"", tarfile.SYMTYPE, "../../../"),
     "is a symbolic link to '../../../'"),
    (("256_ObjectCategories/001.ak47/link", b"", tarfile.SYMTYPE, "{tmp_path}"),
     "is a symbolic link to '{tmp_path}'"),
    (("256_ObjectCategories/001.ak47/link", b"", tarfile.LNKTYPE, "../outside.jpg"),
     "is a hard link to '../outside.jpg'"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "absolute-symlink", "hardlink-out"])
def test_a_tar_member_that_would_land_outside_the_destination_is_refused(
        tmp_path, server, monkeypatch, member, reason):
    member = tuple(part.format(tmp_path=tmp_path) if isinstance(part, str) else part
                   for part in member)
    source = serve_dataset(monkeypatch, server, "caltech256", tar_bytes(extra=[member]))
    dest = tmp_path / "data"
    before = sorted(tmp_path.iterdir())

    with pytest.raises(UserError, match="refused to extract") as error:
        download_dataset("caltech256", dest, progress=False)

    assert reason.format(tmp_path=tmp_path) in str(error.value)
    assert "extracting was deleted" in str(error.value)
    assert sorted(tmp_path.iterdir()) == sorted(before + [dest])  # nothing beside dest
    # Its md5 is the official one, so the archive stays; only the extraction is gone.
    assert [path.name for path in dest.iterdir()] == [source.filename]


@pytest.mark.parametrize("name, reason", [
    ("../escaped.jpg", "parent-directory"),
    ("/absolute/escaped.jpg", "absolute path"),
])
def test_a_zip_member_that_would_land_outside_the_destination_is_refused(
        tmp_path, server, monkeypatch, name, reason):
    source = serve_dataset(monkeypatch, server, "caltech101", caltech101_zip_bytes(extra_names=[name]))
    dest = tmp_path / "data"
    before = sorted(tmp_path.iterdir())

    with pytest.raises(UserError, match=reason):
        download_dataset("caltech101", dest, progress=False)

    assert sorted(tmp_path.iterdir()) == sorted(before + [dest])
    assert [path.name for path in dest.iterdir()] == [source.filename]


@pytest.mark.parametrize("member, message", [
    (("256_ObjectCategories/001.ak47/link.jpg", b"", tarfile.SYMTYPE, "001_0001.jpg"),
     "'256_ObjectCategories/001.ak47/link.jpg' is a symbolic link to '001_0001.jpg'"),
    (("256_ObjectCategories/001.ak47/link.jpg", b"", tarfile.LNKTYPE,
      "256_ObjectCategories/001.ak47/001_0001.jpg"),
     "'256_ObjectCategories/001.ak47/link.jpg' is a hard link to '256_ObjectCategories/001.ak47/001_0001.jpg'"),
], ids=["symlink", "hardlink"])
def test_a_link_member_is_refused_even_inside_the_folder_and_the_verified_archive_is_kept(
        tmp_path, server, monkeypatch, member, message):
    source = serve_dataset(monkeypatch, server, "caltech256", tar_bytes(extra=[member]))
    dest = tmp_path / "data"

    with pytest.raises(UserError, match="refused to extract") as error:
        download_dataset("caltech256", dest, progress=False)

    assert message in str(error.value)
    assert "its md5 is the official one" in str(error.value)
    assert "\n" not in str(error.value)
    assert [path.name for path in dest.iterdir()] == [source.filename]
    with pytest.raises(UserError, match="refused to extract"):  # refused again, not downloaded again
        download_dataset("caltech256", dest, progress=False)
    assert len(server.requests) == 1


class SimulatedCrash(Exception):
    """Stands in for a process killed mid-extraction."""


def test_an_interrupted_extraction_is_redone_by_the_next_call_without_downloading(
        tmp_path, server, monkeypatch):
    serve_dataset(monkeypatch, server, "caltech256", tar_bytes())
    dest = tmp_path / "data"
    real_extract = download.extract_archive

    def extract_then_crash(archive_path, target_dir):
        real_extract(archive_path, target_dir)
        (target_dir / "256_ObjectCategories" / "001.ak47" / "half-written.jpg").write_bytes(b"")
        raise SimulatedCrash()

    with monkeypatch.context() as crash:
        crash.setattr(download, "extract_archive", extract_then_crash)
        with pytest.raises(SimulatedCrash):
            download_dataset("caltech256", dest, progress=False)
    assert (dest / "caltech256.extracting").is_dir()
    assert not (dest / "256_ObjectCategories").exists()

    root = download_dataset("caltech256", dest, progress=False)

    assert extracted_files(root) == EXPECTED_IMAGES  # the half-written file is gone
    assert (root / COMPLETE_MARKER).is_file()
    assert not (dest / "caltech256.extracting").exists()
    assert len(server.requests) == 1  # the verified archive was reused


@pytest.mark.parametrize("honour_range", [True, False], ids=["range", "no-range"])
def test_an_interrupted_download_resumes_from_its_part_file(
        tmp_path, server, monkeypatch, honour_range):
    data = tar_bytes()
    source = serve_dataset(monkeypatch, server, "caltech256", data)
    server.honour_range = honour_range
    dest = tmp_path / "data"
    dest.mkdir()
    kept = len(data) // 3
    (dest / f"{source.filename}.part").write_bytes(data[:kept])

    root = download_dataset("caltech256", dest, progress=False)

    assert extracted_files(root) == EXPECTED_IMAGES
    assert server.requests == [(f"/{source.filename}", f"bytes={kept}-")]
    # With Range only the missing tail travels; without it the server resends everything.
    assert server.sent_bytes == (len(data) - kept if honour_range else len(data))


def test_a_resumed_fetch_counts_the_kept_bytes_in_its_megabytes_and_hashes_the_whole_file(
        tmp_path, server, capsys):
    data = bytes(range(256)) * 12_500  # 3.2 MB: enough to read in megabytes
    server.files["/blob.bin"] = data
    part_path = tmp_path / "blob.bin.part"
    part_path.write_bytes(data[:2_000_000])

    received_md5 = fetch.fetch(server.url("blob.bin"), part_path, label="blob", progress=True,
                               manual_route="download it yourself")

    assert received_md5 == md5_hex(data) and part_path.read_bytes() == data
    assert server.requests == [("/blob.bin", "bytes=2000000-")]
    # 3.2/3.2, not 1.2/1.2: the kept 2 MB count toward the amount done and the total.
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("blob: 3.2/3.2 MB (100%), "), lines


def test_a_connection_closed_early_keeps_the_part_file_and_the_next_call_resumes(
        tmp_path, server, monkeypatch):
    data = tar_bytes()
    source = serve_dataset(monkeypatch, server, "caltech256", data)
    server.truncate_after = len(data) // 2
    dest = tmp_path / "data"

    with pytest.raises(UserError, match="run again to resume"):
        download_dataset("caltech256", dest, progress=False)
    assert (dest / f"{source.filename}.part").stat().st_size == len(data) // 2

    server.truncate_after = None
    root = download_dataset("caltech256", dest, progress=False)

    assert extracted_files(root) == EXPECTED_IMAGES
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-"


def test_a_resumed_download_over_corrupt_kept_bytes_fails_the_md5_and_is_deleted(
        tmp_path, server, monkeypatch):
    data = tar_bytes()
    source = serve_dataset(monkeypatch, server, "caltech256", data)
    dest = tmp_path / "data"
    dest.mkdir()
    part_path = dest / f"{source.filename}.part"
    part_path.write_bytes(b"\xff" * (len(data) // 3))  # wrong bytes, right length

    with pytest.raises(UserError, match=f"expected md5 {md5_hex(data)}"):
        download_dataset("caltech256", dest, progress=False)

    assert not part_path.exists()
    assert not (dest / "256_ObjectCategories").exists()


def test_an_archive_already_in_the_folder_is_checked_and_used_without_downloading(
        tmp_path, server, monkeypatch):
    data = tar_bytes()
    source = serve_dataset(monkeypatch, server, "caltech256", data)
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / source.filename).write_bytes(data)  # e.g. copied in by the user

    root = download_dataset("caltech256", dest, progress=False)

    assert extracted_files(root) == EXPECTED_IMAGES
    assert server.requests == []


def test_a_wrong_archive_already_in_the_folder_is_refused_and_deleted(
        tmp_path, server, monkeypatch):
    source = serve_dataset(monkeypatch, server, "caltech256", tar_bytes())
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / source.filename).write_bytes(tar_bytes("something_else"))

    with pytest.raises(UserError, match="found in the download folder"):
        download_dataset("caltech256", dest, progress=False)

    assert list(dest.iterdir()) == []
    assert server.requests == []


def test_a_server_404_is_a_user_error_naming_the_url_and_the_manual_route(
        tmp_path, server, monkeypatch):
    serve_dataset(monkeypatch, server, "caltech256", tar_bytes())
    missing_url = server.url("missing.tar")

    with pytest.raises(UserError, match="HTTP 404") as error:
        download_dataset("caltech256", tmp_path / "data", url=missing_url, progress=False)

    assert missing_url in str(error.value)
    assert "--data" in str(error.value)


def test_an_unreachable_server_is_a_user_error_naming_the_url(tmp_path):
    # A bound socket that never listens: connecting to its port is refused at once.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        unreachable_url = f"http://127.0.0.1:{silent.getsockname()[1]}/256_ObjectCategories.tar"

        with pytest.raises(UserError, match="could not download") as error:
            download_dataset("caltech256", tmp_path / "data", url=unreachable_url, progress=False)

    assert unreachable_url in str(error.value)
    assert "--data" in str(error.value)


def test_an_unknown_dataset_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match="caltech256, caltech101") as error:
        download_dataset("caltech265", tmp_path)

    assert "Did you mean caltech256?" in str(error.value)


def test_an_unmarked_dataset_folder_at_the_destination_is_left_alone(
        tmp_path, server, monkeypatch):
    serve_dataset(monkeypatch, server, "caltech256", tar_bytes())
    user_folder = tmp_path / "data" / "256_ObjectCategories" / "001.ak47"
    user_folder.mkdir(parents=True)
    (user_folder / "mine.jpg").write_bytes(b"user data")

    with pytest.raises(UserError, match="pass it with --data"):
        download_dataset("caltech256", tmp_path / "data", progress=False)

    assert (user_folder / "mine.jpg").read_bytes() == b"user data"
    assert server.requests == []


def test_the_official_sources_have_md5s_and_a_folder_per_class_root():
    for name, source in download.SOURCES.items():
        assert source.url.startswith(("https://", "http://")), name  # the md5 guards plain HTTP
        assert source.url.rsplit("/", 1)[1].startswith(source.filename), name
        assert len(source.md5) == 32 and int(source.md5, 16) >= 0, name
        if name.startswith("caltech"):
            assert source.url.startswith("https://data.caltech.edu/records/"), name
            assert source.root_name == source.archive_root, name
            assert source.archive_root.endswith("_ObjectCategories"), name
        else:  # built by a converter beside the extracted archive, under its own name
            assert callable(source.convert), name
            assert source.root_name not in (source.archive_root, ""), name


def test_a_source_with_a_converter_must_name_the_folder_it_builds():
    with pytest.raises(ValueError, match="both convert and converted_root"):
        download.DatasetSource(url="https://example.org/a.zip", filename="a.zip", md5="0" * 32,
                               archive_root="a", convert=lambda extracted, root: None)


def test_train_accepts_every_downloadable_dataset_name():
    import train

    for name in download.SOURCES:
        assert train.parse_args(["--dataset", name]).dataset == name


def test_the_config_knows_every_dataset_the_downloader_knows():
    from keras_caltech.config import DATASET_CLASSES
    from keras_caltech.data.download import SOURCES

    assert set(DATASET_CLASSES) == set(SOURCES)


# ---------------------------------------------------------------- a full disk


def no_space(error_number=errno.ENOSPC):
    return OSError(error_number, os.strerror(error_number))


def fake_disk_usage(free_bytes):
    """Returns a stand-in for shutil.disk_usage that reports ``free_bytes`` free anywhere."""
    return lambda path: types.SimpleNamespace(total=10**9, used=10**9 - free_bytes, free=free_bytes)


def fill_the_disk_on_second_file(monkeypatch, module, error_number=errno.ENOSPC):
    """Makes ``module.copyfileobj`` (what tarfile or zipfile writes members with) fail like a full disk.

    The first file is written whole; the second gets a few bytes, then the error.
    """
    real_copy = module.copyfileobj
    calls = []

    def copy_until_full(source, target, *args, **kwargs):
        calls.append(target)
        if len(calls) < 2:
            return real_copy(source, target, *args, **kwargs)
        target.write(source.read(10))
        raise no_space(error_number)

    monkeypatch.setattr(module, "copyfileobj", copy_until_full)
    return calls


def tar_file_bytes(data):
    """Returns the summed size of the regular members of a tar (optionally compressed)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return sum(member.size for member in archive.getmembers() if member.isreg())


def caltech101_sizes():
    """Returns (zip archive, its uncompressed size, its inner tar.gz's uncompressed size)."""
    data = caltech101_zip_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        outer = sum(member.file_size for member in archive.infolist())
        inner = tar_file_bytes(archive.read("caltech-101/101_ObjectCategories.tar.gz"))
    return data, outer, inner


@pytest.mark.parametrize("name, writer, error_number", [
    ("caltech256", tarfile, errno.ENOSPC),
    ("caltech101", shutil, errno.ENOSPC),  # the outer zip
    ("caltech101", tarfile, errno.EDQUOT),  # the tar.gz inside it: both count toward the need
], ids=["tar", "zip", "nested-tar-quota"])
def test_a_full_disk_while_extracting_keeps_the_archive_and_a_rerun_extracts_it_without_downloading(
        tmp_path, server, monkeypatch, name, writer, error_number):
    if name == "caltech256":
        data = tar_bytes()
        needed = tar_file_bytes(data)
    else:
        data, outer, inner = caltech101_sizes()
        needed = outer + inner if writer is tarfile else outer
    source = serve_dataset(monkeypatch, server, name, data)
    dest = tmp_path / "data"

    with monkeypatch.context() as full:
        calls = fill_the_disk_on_second_file(full, writer, error_number)
        full.setattr(shutil, "disk_usage", fake_disk_usage(12_345))
        with pytest.raises(UserError) as error:
            download_dataset(name, dest, progress=False)
    assert len(calls) == 2  # it did stop part-way through

    message = str(error.value)
    assert message.startswith(f"not enough disk space in {dest} to extract {source.filename} "
                              f"({os.strerror(error_number)})")
    assert f"it needs {needed:,} bytes (the archive's uncompressed size)" in message
    assert "12,345 bytes is free there" in message
    assert f"verified archive {dest / source.filename} kept" in message
    assert "\n" not in message
    assert [path.name for path in dest.iterdir()] == [source.filename]  # no partial extraction

    root = download_dataset(name, dest, progress=False)

    assert extracted_files(root) == EXPECTED_IMAGES
    assert len(server.requests) == 1


def test_a_full_disk_while_downloading_keeps_the_part_file_and_the_next_call_resumes(
        tmp_path, server, monkeypatch):
    data = tar_bytes()
    source = serve_dataset(monkeypatch, server, "caltech256", data)
    dest = tmp_path / "data"
    room = len(data) // 3  # bytes the disk takes before it is full

    class FullDiskFile(io.FileIO):
        def write(self, chunk):
            if self.tell() + len(chunk) > room:
                super().write(chunk[:room - self.tell()])
                raise no_space()
            return super().write(chunk)

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if mode in ("wb", "ab"):
            return FullDiskFile(path, mode)
        return open(path, mode, *args, **kwargs)

    with monkeypatch.context() as full:
        full.setattr(fetch, "open", open_on_a_full_disk, raising=False)
        full.setattr(shutil, "disk_usage", fake_disk_usage(0))
        with pytest.raises(UserError) as error:
            download_dataset("caltech256", dest, progress=False)

    message = str(error.value)
    part_path = dest / f"{source.filename}.part"
    assert message.startswith(f"not enough disk space in {dest} to download {source.filename} "
                              f"({os.strerror(errno.ENOSPC)}): it needs {len(data) - room:,} bytes "
                              f"more, {len(data):,} bytes in all")
    assert "0 bytes is free there" in message
    assert f"The {room:,} bytes received are kept in {part_path}" in message
    assert "resume" in message and "\n" not in message
    assert part_path.stat().st_size == room

    root = download_dataset("caltech256", dest, progress=False)

    assert extracted_files(root) == EXPECTED_IMAGES
    assert server.requests[-1][1] == f"bytes={room}-"
