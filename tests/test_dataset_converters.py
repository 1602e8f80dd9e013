"""Tests for keras_caltech.data.converters, run through download_dataset end to end.

Each test builds a tiny archive in the published dataset's own format (Tiny ImageNet's
zip with val_annotations.txt; CIFAR-100's tar.gz of Python 2 pickles), serves it on
127.0.0.1 with test_download's server, and checks the folder-per-class tree that comes out.
"""

import dataclasses
import errno
import io
import os
import pickle
import shutil
import struct
import tarfile
import types
import zipfile

import cv2
import numpy as np
import pytest

from keras_caltech.data import converters, download
from keras_caltech.data.download import COMPLETE_MARKER, download_dataset
from keras_caltech.errors import UserError
from test_download import SimulatedCrash, add_member, serve_dataset, server, tiny_jpeg  # noqa: F401

WNIDS = ("n01443537", "n01629819", "n01641577")
TRAIN_IMAGES_PER_WNID = 2
# Two labelled validation images, out of class order: the annotations decide their class.
VAL_LABELS = (("val_0.JPEG", WNIDS[2]), ("val_1.JPEG", WNIDS[0]))

CIFAR_NAMES = (b"apple", b"aquarium_fish", b"bear")
CIFAR_IMAGES_PER_SPLIT = 6  # 2 per class in train, and again in test


# ---------------------------------------------------------------- Tiny ImageNet


def annotation_line(filename, wnid):
    return f"{filename}\t{wnid}\t0\t0\t7\t7"


def tiny_imagenet_zip_bytes(val_lines=None, drop_val_files=()):
    """Returns a zip laid out like tiny-imagenet-200.zip, with 3 classes.

    Args:
        val_lines: the lines of val_annotations.txt; default: one per VAL_LABELS entry.
        drop_val_files: val image names to leave out of val/images/.
    """
    if val_lines is None:
        val_lines = [annotation_line(filename, wnid) for filename, wnid in VAL_LABELS]
    root = "tiny-imagenet-200"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{root}/wnids.txt", "\n".join(WNIDS) + "\n")
        archive.writestr(f"{root}/words.txt", "".join(f"{wnid}\tthing {wnid}\n" for wnid in WNIDS))
        for class_index, wnid in enumerate(WNIDS):
            archive.writestr(f"{root}/train/{wnid}/{wnid}_boxes.txt",
                             "".join(f"{wnid}_{index}.JPEG\t0\t0\t7\t7\n"
                                     for index in range(TRAIN_IMAGES_PER_WNID)))
            for index in range(TRAIN_IMAGES_PER_WNID):
                archive.writestr(f"{root}/train/{wnid}/images/{wnid}_{index}.JPEG",
                                 tiny_jpeg(30 * class_index + 10 * index))
        for index, (filename, _) in enumerate(VAL_LABELS):
            if filename not in drop_val_files:
                archive.writestr(f"{root}/val/images/{filename}", tiny_jpeg(200 + 20 * index))
        archive.writestr(f"{root}/val/val_annotations.txt", "\n".join(val_lines) + "\n")
        archive.writestr(f"{root}/test/images/test_0.JPEG", tiny_jpeg(5))
    return buffer.getvalue()


def image_names(folder):
    return sorted(path.name for path in folder.iterdir())


def test_tiny_imagenet_train_and_val_images_land_in_one_folder_per_wnid(
        tmp_path, server, monkeypatch):
    archive = tiny_imagenet_zip_bytes()
    serve_dataset(monkeypatch, server, "tinyimagenet", archive)
    dest = tmp_path / "data"

    root = download_dataset("tinyimagenet", dest, progress=False)

    assert root == dest / "tiny-imagenet-200-by-class"
    assert image_names(root) == [COMPLETE_MARKER, *WNIDS]
    assert image_names(root / WNIDS[0]) == [f"{WNIDS[0]}_0.JPEG", f"{WNIDS[0]}_1.JPEG", "val_1.JPEG"]
    assert image_names(root / WNIDS[1]) == [f"{WNIDS[1]}_0.JPEG", f"{WNIDS[1]}_1.JPEG"]
    assert image_names(root / WNIDS[2]) == [f"{WNIDS[2]}_0.JPEG", f"{WNIDS[2]}_1.JPEG", "val_0.JPEG"]
    with zipfile.ZipFile(io.BytesIO(archive)) as source:  # moved, not re-encoded
        assert (root / WNIDS[2] / "val_0.JPEG").read_bytes() == source.read(
            "tiny-imagenet-200/val/images/val_0.JPEG")
    # Only the tree is left: no archive, boxes, test images or extraction folder.
    assert image_names(dest) == ["tiny-imagenet-200-by-class"]


@pytest.mark.parametrize("val_lines, drop, message", [
    ([annotation_line("val_0.JPEG", "n99999999")], (), "'n99999999', which is not in wnids.txt"),
    ([annotation_line("val_0.JPEG", WNIDS[2])], ("val_0.JPEG",), "val_0.JPEG is missing"),
    ([annotation_line("../../../escaped.JPEG", WNIDS[0])], (), "not a plain file or folder name"),
    ([annotation_line("images/val_0.JPEG", WNIDS[0])], (), "not a plain file or folder name"),
    ([annotation_line("..", WNIDS[0])], (), "not a plain file or folder name"),
    (["val_0.JPEG n01443537"], (), "should be tab-separated"),
], ids=["unknown-wnid", "missing-file", "dotdot", "separator", "parent", "no-tabs"])
def test_a_hostile_tiny_imagenet_annotation_is_refused_and_only_the_verified_archive_is_kept(
        tmp_path, server, monkeypatch, val_lines, drop, message):
    source = serve_dataset(monkeypatch, server, "tinyimagenet",
                           tiny_imagenet_zip_bytes(val_lines=val_lines, drop_val_files=drop))
    dest = tmp_path / "data"

    with pytest.raises(UserError, match="extracting was deleted") as error:
        download_dataset("tinyimagenet", dest, progress=False)

    assert message in str(error.value)
    assert "\n" not in str(error.value)
    # No final folder or extraction folder; the archive's md5 is the official one, so it stays.
    assert image_names(dest) == [source.filename]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]  # nothing escaped


# ---------------------------------------------------------------- CIFAR-100


class Python2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    """Pickles at protocol 2 the way Python 2's cPickle wrote the CIFAR files.

    Python 3 pickles bytes at protocol 2 as a call to ``_codecs.encode``, a global the
    restricted unpickler refuses; Python 2 wrote its ``str`` as a plain string opcode,
    which loads as bytes with ``encoding="bytes"``. Text is written the same way.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, value):
        data = value.encode("latin-1") if isinstance(value, str) else value
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    dispatch[bytes] = save_python2_str
    dispatch[str] = save_python2_str


def python2_pickle(value, reconstruct_module="numpy.core.multiarray"):
    """Returns ``value`` pickled like the CIFAR files: numpy 1.x named numpy.core.multiarray."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(value)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n",
                                     f"c{reconstruct_module}\n".encode())


def cifar_split(seed):
    """Returns a CIFAR-100 split dict: 2 random images per class, bytes keys as in the files."""
    rng = np.random.default_rng(seed)
    labels = [index % len(CIFAR_NAMES) for index in range(CIFAR_IMAGES_PER_SPLIT)]
    return {
        b"batch_label": b"training batch 1 of 1",
        b"data": rng.integers(0, 256, (CIFAR_IMAGES_PER_SPLIT, 3072), dtype=np.uint8),
        b"fine_labels": labels,
        b"coarse_labels": [0] * CIFAR_IMAGES_PER_SPLIT,
        b"filenames": [f"{CIFAR_NAMES[label].decode()}_s_{seed:02d}{index:04d}.png".encode()
                       for index, label in enumerate(labels)],
    }


def cifar_tar_bytes(train=None, test=None, meta=None, reconstruct_module="numpy.core.multiarray"):
    """Returns a tar.gz laid out like cifar-100-python.tar.gz; each part may be replaced by raw bytes."""
    parts = {
        "meta": meta if meta is not None else python2_pickle(
            {b"fine_label_names": list(CIFAR_NAMES), b"coarse_label_names": [b"fruit"]}),
        "train": train if train is not None else python2_pickle(cifar_split(1), reconstruct_module),
        "test": test if test is not None else python2_pickle(cifar_split(2), reconstruct_module),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in parts.items():
            add_member(archive, f"cifar-100-python/{name}", data)
    return buffer.getvalue()


def expected_rgb(split, filename):
    """Returns the (32, 32, 3) RGB image a split dict holds under ``filename``."""
    row = split[b"filenames"].index(filename.encode())
    return split[b"data"][row].reshape(3, 32, 32).transpose(1, 2, 0)


@pytest.mark.parametrize("reconstruct_module", ["numpy.core.multiarray", "numpy._core.multiarray"],
                         ids=["numpy1-pickle", "numpy2-pickle"])
def test_cifar100_train_and_test_become_pngs_with_the_exact_pixels_in_one_folder_per_label(
        tmp_path, server, monkeypatch, reconstruct_module):
    serve_dataset(monkeypatch, server, "cifar100", cifar_tar_bytes(reconstruct_module=reconstruct_module))
    dest = tmp_path / "data"

    root = download_dataset("cifar100", dest, progress=False)

    assert root == dest / "cifar-100-by-class"
    assert image_names(root) == [COMPLETE_MARKER, "apple", "aquarium_fish", "bear"]
    assert image_names(dest) == ["cifar-100-by-class"]
    splits = (cifar_split(1), cifar_split(2))
    for label, name in enumerate(CIFAR_NAMES):
        expected_names = sorted(filename.decode() for split in splits
                                for filename, image_label in zip(split[b"filenames"], split[b"fine_labels"])
                                if image_label == label)
        assert image_names(root / name.decode()) == expected_names  # 2 from train + 2 from test
        for filename in expected_names:
            split = splits[0] if filename.encode() in splits[0][b"filenames"] else splits[1]
            written = cv2.imread(str(root / name.decode() / filename), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(written[..., ::-1], expected_rgb(split, filename))


class RunsAShellCommand:
    """Unpickling this calls os.system: what a malicious pickle does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("part", ["meta", "train", "test"])
def test_a_cifar_pickle_that_names_os_system_is_refused_without_running_it(
        tmp_path, server, monkeypatch, part):
    marker = tmp_path / "the-pickle-ran"
    hostile = python2_pickle({b"data": RunsAShellCommand(f"touch {marker}")})
    source = serve_dataset(monkeypatch, server, "cifar100", cifar_tar_bytes(**{part: hostile}))
    dest = tmp_path / "data"

    with pytest.raises(UserError, match="refused to unpickle") as error:
        download_dataset("cifar100", dest, progress=False)

    assert f"the Python global {os.system.__module__}.system" in str(error.value)
    assert not marker.exists()
    assert image_names(dest) == [source.filename]


def changed_split(**changes):
    """Returns a pickled training split with some fields replaced."""
    split = cifar_split(1)
    split.update({key.encode(): value for key, value in changes.items()})
    return python2_pickle(split)


@pytest.mark.parametrize("train, message", [
    (changed_split(fine_labels=[0, 1, 2, 0, 1]), "should describe the same images"),
    (changed_split(filenames=[b"a.png"] * 7), "should describe the same images"),
    (changed_split(data=np.zeros((6, 3071), np.uint8)), "shape (images, 3072)"),
    (changed_split(data=np.zeros((6, 3072), np.float32)), "a float32 array"),
    (changed_split(fine_labels=[0, 1, 2, 0, 1, 3]), "in [0, 3). Received: 3"),
    (changed_split(filenames=[b"../escaped.png"] * 6), "not a plain file or folder name"),
    (changed_split(filenames=[b"apple/escaped.png"] * 6), "not a plain file or folder name"),
    (python2_pickle([1, 2, 3]), "should hold a dict with the key b'data'"),
    (b"not a pickle", "could not be unpickled"),
], ids=["labels-count", "filenames-count", "columns", "dtype", "label-range", "dotdot", "separator",
        "not-a-dict", "garbage"])
def test_a_cifar_split_of_the_wrong_shape_is_refused_in_one_line(
        tmp_path, server, monkeypatch, train, message):
    source = serve_dataset(monkeypatch, server, "cifar100", cifar_tar_bytes(train=train))
    dest = tmp_path / "data"

    with pytest.raises(UserError) as error:
        download_dataset("cifar100", dest, progress=False)

    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert image_names(dest) == [source.filename]


def test_a_cifar_file_name_repeated_within_a_class_does_not_overwrite_an_image(
        tmp_path, server, monkeypatch):
    test_split = cifar_split(2)
    test_split[b"filenames"] = cifar_split(1)[b"filenames"]  # the test split reuses train's names
    serve_dataset(monkeypatch, server, "cifar100", cifar_tar_bytes(test=python2_pickle(test_split)))

    root = download_dataset("cifar100", tmp_path / "data", progress=False)

    assert image_names(root / "apple") == ["apple_s_010000.png", "apple_s_010000_test0.png",
                                           "apple_s_010003.png", "apple_s_010003_test3.png"]
    written = cv2.imread(str(root / "apple" / "apple_s_010000_test0.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written[..., ::-1], expected_rgb(test_split, "apple_s_010000.png"))


# ---------------------------------------------------------------- both


ARCHIVES = {"tinyimagenet": tiny_imagenet_zip_bytes, "cifar100": cifar_tar_bytes}


def test_a_cifar_conversion_interrupted_mid_way_leaves_no_dataset_folder_and_is_redone(
        tmp_path, server, monkeypatch):
    source = serve_dataset(monkeypatch, server, "cifar100", cifar_tar_bytes())
    dest = tmp_path / "data"
    real_write_png = converters._write_png
    written = []

    def write_then_crash(path, image):
        if len(written) == 3:
            raise SimulatedCrash()
        real_write_png(path, image)
        written.append(path)

    with monkeypatch.context() as crash:
        crash.setattr(converters, "_write_png", write_then_crash)
        with pytest.raises(SimulatedCrash):
            download_dataset("cifar100", dest, progress=False)
    assert len(written) == 3 and written[0].is_file()  # it did stop part-way through
    assert not (dest / source.root_name).exists()
    assert (dest / source.filename).is_file()  # the verified archive is kept for the rerun

    root = download_dataset("cifar100", dest, progress=False)

    assert sum(len(image_names(folder)) for folder in root.iterdir() if folder.is_dir()) == 12
    assert image_names(dest) == ["cifar-100-by-class"]
    assert len(server.requests) == 1


@pytest.mark.parametrize("name", ARCHIVES)
def test_a_crash_after_conversion_but_before_the_rename_is_redone_by_the_next_call(
        tmp_path, server, monkeypatch, name):
    source = serve_dataset(monkeypatch, server, name, ARCHIVES[name]())
    dest = tmp_path / "data"

    def convert_then_crash(extracted_root, class_root):
        source.convert(extracted_root, class_root)
        (class_root / "half-written").mkdir()
        raise SimulatedCrash()

    with monkeypatch.context() as crash:
        crash.setitem(download.SOURCES, name, dataclasses.replace(source, convert=convert_then_crash))
        with pytest.raises(SimulatedCrash):
            download_dataset(name, dest, progress=False)
    assert not (dest / source.root_name).exists()

    root = download_dataset(name, dest, progress=False)

    assert not (root / "half-written").exists()
    assert (root / COMPLETE_MARKER).is_file()
    assert image_names(dest) == [source.root_name]
    assert len(server.requests) == 1


@pytest.mark.parametrize("name", ARCHIVES)
def test_a_second_call_reuses_the_converted_folder_without_any_request(
        tmp_path, server, monkeypatch, name):
    serve_dataset(monkeypatch, server, name, ARCHIVES[name]())
    dest = tmp_path / "data"
    first_root = download_dataset(name, dest, progress=False)
    first_tree = sorted(path.relative_to(first_root) for path in first_root.rglob("*"))

    second_root = download_dataset(name, dest, progress=False)

    assert second_root == first_root
    assert sorted(path.relative_to(second_root) for path in second_root.rglob("*")) == first_tree
    assert len(server.requests) == 1


def test_a_full_disk_while_converting_keeps_the_archive_and_a_rerun_converts_without_downloading(
        tmp_path, server, monkeypatch):
    archive = cifar_tar_bytes()
    source = serve_dataset(monkeypatch, server, "cifar100", archive)
    dest = tmp_path / "data"
    real_write_png = converters._write_png
    written = []

    def write_until_full(path, image):
        if len(written) == 3:
            path.write_bytes(b"\x89PNG")  # the start of a file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write_png(path, image)
        written.append(path)

    with monkeypatch.context() as full:
        full.setattr(converters, "_write_png", write_until_full)
        full.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=2_000_000))
        with pytest.raises(UserError) as error:
            download_dataset("cifar100", dest, progress=False)

    message = str(error.value)
    with tarfile.open(fileobj=io.BytesIO(archive)) as opened:
        extracted_bytes = sum(member.size for member in opened.getmembers() if member.isfile())
    assert message.startswith(f"not enough disk space in {dest} to convert {source.filename} to a "
                              f"folder per class ({os.strerror(errno.ENOSPC)}): it needs "
                              f"{extracted_bytes:,} bytes for the extracted archive, plus room "
                              "for the converted copy")
    assert "2.0 MB is free there" in message
    assert f"verified archive {dest / source.filename} kept" in message and "\n" not in message
    assert image_names(dest) == [source.filename]  # no extraction folder, no dataset folder

    root = download_dataset("cifar100", dest, progress=False)

    assert sum(len(image_names(folder)) for folder in root.iterdir() if folder.is_dir()) == 12
    assert len(server.requests) == 1


@pytest.mark.parametrize("name", ARCHIVES)
def test_a_failed_download_of_a_converted_dataset_names_a_manual_route_that_works(
        tmp_path, server, monkeypatch, name):
    source = serve_dataset(monkeypatch, server, name, ARCHIVES[name]())
    dest = tmp_path / "data"

    with pytest.raises(UserError, match="HTTP 404") as error:
        download_dataset(name, dest, url=server.url("missing"), progress=False)

    # Its archive is not a folder per class, so --data is no way round the download.
    assert "--data" not in str(error.value)
    assert (f"download {source.url} yourself as {dest / source.filename}: a file found there is "
            "checked and used without downloading") in str(error.value)

    (dest / source.filename).write_bytes(server.files[f"/{source.filename}"])  # as the user would
    root = download_dataset(name, dest, url=server.url("missing"), progress=False)

    assert (root / COMPLETE_MARKER).is_file()
    assert len(server.requests) == 1  # only the failed one
