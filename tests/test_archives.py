"""Tests for keras_caltech.data.archives: hostile archives built by hand, extracted directly.

Each archive here would write outside its folder, or leave a link behind, if extracted
naively. None may write anything at all: the member list is checked before extraction.
"""

import io
import os
import stat
import tarfile
import zipfile

import pytest

from keras_caltech.data import archives
from keras_caltech.data.archives import extract_archive
from keras_caltech.errors import UserError
from test_download import add_member, tar_bytes

CHAIN_STEPS = "abcdefghijklmnop"


def cve_2025_4517_tar(target_dir):
    """Returns a tar laid out like the CVE-2025-4517 exploit, for extraction into ``target_dir``.

    Sixteen nested folders with long names, each reached through a one-letter symlink
    (``a -> ddd``, ``ddd/b -> ddd``, ...), so ``a/b/.../p`` is short but resolves to a
    path near PATH_MAX. A long-named link at its end (pointing 16 levels up, back to the
    target) pushes the resolved path past PATH_MAX, where ``os.path.realpath`` stops
    resolving, so the tarfile ``"data"`` filter of an unpatched Python takes ``escape``
    (that link's parent: the target's parent) for a path inside the target. Through it
    the archive overwrites ``flag`` beside the target (with a hard link) and writes
    ``newfile`` there. On Python 3.11.7 it does, unless links are refused outright.
    """
    path_max = os.pathconf(target_dir, "PC_PATH_MAX")
    component = "d" * ((path_max - len(str(target_dir)) - 1) // (len(CHAIN_STEPS) + 1))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        path = ""
        for step in CHAIN_STEPS:
            add_member(archive, os.path.join(path, component), member_type=tarfile.DIRTYPE)
            add_member(archive, os.path.join(path, step), member_type=tarfile.SYMTYPE,
                       linkname=component)
            path = os.path.join(path, component)
        long_link = os.path.join(*CHAIN_STEPS, "l" * 254)
        add_member(archive, long_link, member_type=tarfile.SYMTYPE,
                   linkname=os.path.join(*[".."] * len(CHAIN_STEPS)))
        add_member(archive, "escape", member_type=tarfile.SYMTYPE,
                   linkname=os.path.join(long_link, ".."))
        add_member(archive, "flaglink", member_type=tarfile.LNKTYPE, linkname="escape/flag")
        add_member(archive, "flaglink", b"overwritten")
        add_member(archive, "escape/newfile", b"written outside")
    return buffer.getvalue()


def test_a_cve_2025_4517_symlink_chain_is_refused_and_writes_nothing_anywhere(tmp_path):
    outer = tmp_path / "outer"
    target = outer / "target"
    target.mkdir(parents=True)
    (outer / "flag").write_text("original")
    archive_path = tmp_path / "chain.tar"
    archive_path.write_bytes(cve_2025_4517_tar(target))

    with pytest.raises(UserError, match="member 'a' is a symbolic link to 'ddd") as error:
        extract_archive(archive_path, target)

    assert "hold only files and folders" in str(error.value)
    assert (outer / "flag").read_text() == "original"
    assert sorted(path.name for path in outer.iterdir()) == ["flag", "target"]
    assert list(target.iterdir()) == []  # refused before the first member was written


@pytest.mark.parametrize("link, kind", [
    (("256_ObjectCategories/001.ak47/link.jpg", b"", tarfile.SYMTYPE, "001_0001.jpg"),
     "a symbolic link to '001_0001.jpg'"),
    (("256_ObjectCategories/001.ak47/link.jpg", b"", tarfile.LNKTYPE,
      "256_ObjectCategories/001.ak47/001_0001.jpg"),
     "a hard link to '256_ObjectCategories/001.ak47/001_0001.jpg'"),
    (("256_ObjectCategories/001.ak47/fifo", b"", tarfile.FIFOTYPE), "a device, FIFO"),
], ids=["symlink", "hardlink", "fifo"])
def test_a_tar_link_pointing_inside_the_folder_is_refused_before_any_member_is_written(
        tmp_path, link, kind):
    archive_path = tmp_path / "images.tar"
    archive_path.write_bytes(tar_bytes(extra=[link]))  # the images come first, the link last
    target = tmp_path / "target"
    target.mkdir()

    with pytest.raises(UserError, match="refused to extract") as error:
        extract_archive(archive_path, target)

    assert f"member '{link[0]}' is {kind}" in str(error.value)
    assert list(target.iterdir()) == []


def test_the_tar_data_filter_still_refuses_a_link_out_if_the_member_check_let_it_pass(
        tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "_tar_link_kind", lambda member: None)  # first line down
    archive_path = tmp_path / "images.tar"
    archive_path.write_bytes(tar_bytes(extra=[("256_ObjectCategories/link", b"", tarfile.SYMTYPE,
                                               "../../outside")]))
    target = tmp_path / "target"
    target.mkdir()

    with pytest.raises(UserError, match="tarfile's data filter refused member '256_ObjectCategories/link'"):
        extract_archive(archive_path, target)

    assert not (target / "256_ObjectCategories" / "link").is_symlink()


def zip_with_entry(name, unix_mode, data):
    """Returns a zip with one regular image entry and one entry with the given Unix mode."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images/001.jpg", b"jpeg bytes")
        entry = zipfile.ZipInfo(name)
        entry.create_system = 3  # Unix: unzip reads the mode from the high 16 bits
        entry.external_attr = unix_mode << 16
        archive.writestr(entry, data)
    return buffer.getvalue()


def test_a_zip_symlink_entry_is_refused_before_any_entry_is_written(tmp_path):
    archive_path = tmp_path / "images.zip"
    archive_path.write_bytes(zip_with_entry("images/link", stat.S_IFLNK | 0o777, "../../../etc"))
    target = tmp_path / "target"
    target.mkdir()

    with pytest.raises(UserError, match="member 'images/link' is a symbolic link"):
        extract_archive(archive_path, target)

    assert list(target.iterdir()) == []


def test_a_zip_entry_with_a_regular_unix_mode_is_extracted_and_its_size_returned(tmp_path):
    archive_path = tmp_path / "images.zip"
    archive_path.write_bytes(zip_with_entry("images/002.jpg", stat.S_IFREG | 0o644, b"more bytes"))
    target = tmp_path / "target"
    target.mkdir()

    extracted_bytes = extract_archive(archive_path, target)

    assert (target / "images" / "002.jpg").read_bytes() == b"more bytes"
    assert extracted_bytes == len(b"jpeg bytes") + len(b"more bytes")


def test_a_corrupt_gzip_stream_is_one_user_error_saying_the_archive_is_damaged(tmp_path):
    data = bytearray(tar_bytes(compression="gz"))
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # zeros in the middle of the deflate stream
    archive_path = tmp_path / "images.tar.gz"
    archive_path.write_bytes(bytes(data))
    target = tmp_path / "target"
    target.mkdir()

    with pytest.raises(UserError, match="the archive is damaged") as error:
        extract_archive(archive_path, target)

    assert "\n" not in str(error.value)
