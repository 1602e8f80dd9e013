"""Downloads, verifies and extracts published datasets as folder-per-class trees.

``download_dataset(name, "data")`` knows Caltech-256, Caltech-101, Tiny ImageNet and
CIFAR-100 (:data:`SOURCES`). ``download_dataset("caltech256", "data")`` leaves
``data/256_ObjectCategories/``, a folder-per-class tree, and returns its path. Tiny
ImageNet and CIFAR-100 do not extract to such a tree, so a converter
(:mod:`keras_caltech.data.converters`) builds one from the extracted archive. Every step
survives an interruption:

1. The archive downloads to ``<dest>/<file>.part``; a rerun resumes it with an HTTP
   ``Range`` request where the server allows, else starts over
   (:mod:`keras_caltech.data.fetch`). Its md5 is computed while it streams, and only a
   matching file is renamed to ``<dest>/<file>``.
2. It is extracted into ``<dest>/<name>.extracting/`` (a leftover one from an interrupted
   run is deleted first), and converted there if the dataset needs it. A ``.complete``
   marker is written into the dataset folder last, then the folder is renamed into place,
   a single atomic step: the final folder never exists half-extracted or half-converted.
3. Later calls find the marked folder and return it without touching the network.

The archive is deleted once extracted: the folder is what training reads, and the
Caltech-256 tar alone is 1.2 GB. Until then only a checksum mismatch deletes it: an
archive whose md5 matched is the published file, and downloading it again could only
bring the same bytes. If extraction or conversion fails (a full disk, a member refused
as unsafe, contents the converter refuses), the extraction folder is deleted and the
archive kept for the rerun. A full disk during the download keeps the ``.part`` file to
resume; every full disk is reported with the space needed and the space free.
"""

import collections.abc
import dataclasses
import difflib
import os
import pathlib
import shutil

from keras_caltech.data.archives import (DISK_FULL_ERRNOS, DiskFullError, disk_full_message,
                                         extract_archive, size_text)
from keras_caltech.data.converters import cifar100_to_class_folders, tiny_imagenet_to_class_folders
from keras_caltech.data.fetch import fetch, md5_of_file
from keras_caltech.errors import UserError

COMPLETE_MARKER = ".complete"


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Where one dataset is published and what its archive holds.

    Attributes:
        url: the official download address.
        filename: the archive's file name, kept under ``dest_dir``.
        md5: the archive's md5, hex; the download is refused unless it matches.
        archive_root: the directory the archive extracts to: the folder-per-class tree
            itself, or (with ``convert``) the converter's input.
        inner_archive: file name of an archive nested in the downloaded one, which holds
            ``archive_root``; None when ``archive_root`` is in the download itself.
        convert: None when ``archive_root`` is already a folder per class; else
            ``convert(extracted_root, class_root)``, which builds the folder-per-class
            tree at ``class_root`` (a new folder) from the extracted ``archive_root``.
        converted_root: with ``convert``: the name of the tree it builds, which is
            the folder left under ``dest_dir``.
    """

    url: str
    filename: str
    md5: str
    archive_root: str
    inner_archive: str | None = None
    convert: collections.abc.Callable | None = None
    converted_root: str | None = None

    def __post_init__(self):
        if (self.convert is None) != (self.converted_root is None):
            raise ValueError("DatasetSource needs both convert and converted_root, or neither.")
        if self.converted_root == self.archive_root:
            raise ValueError("converted_root must differ from archive_root: both are built in "
                             "the same extraction folder.")

    @property
    def root_name(self):
        """The folder-per-class tree's name under ``dest_dir``, as download_dataset leaves it."""
        return self.converted_root or self.archive_root


SOURCES = {
    # Published by Caltech with this md5 (also the one torchvision checks).
    "caltech256": DatasetSource(
        url="https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar?download=1",
        filename="256_ObjectCategories.tar",
        md5="67b4f42ca05d46448c6bb8ecd2220f6d",
        archive_root="256_ObjectCategories"),
    # CaltechDATA serves a zip holding caltech-101/101_ObjectCategories.tar.gz and the
    # annotations. Caltech does not publish the zip's md5; this is the one that
    # mlverse/torchvision (R/dataset-caltech.R) and other public loaders check for this
    # exact URL.
    "caltech101": DatasetSource(
        url="https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip?download=1",
        filename="caltech-101.zip",
        md5="3138e1922a9193bfa496528edbbc45d0",
        archive_root="101_ObjectCategories",
        inner_archive="101_ObjectCategories.tar.gz"),
    # The md5 that public loaders check for this URL (avalanche, and many TinyImageNet
    # classes written for torchvision); Stanford publishes none. The md5 also guards the
    # plain-HTTP download.
    "tinyimagenet": DatasetSource(
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        filename="tiny-imagenet-200.zip",
        md5="90528d7ca1a48142e341f4ef8d21d0de",
        archive_root="tiny-imagenet-200",
        convert=tiny_imagenet_to_class_folders,
        converted_root="tiny-imagenet-200-by-class"),
    # torchvision's CIFAR100 checks this md5 for this URL (it now redirects to
    # cave.cs.toronto.edu, which urllib follows).
    "cifar100": DatasetSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        archive_root="cifar-100-python",
        convert=cifar100_to_class_folders,
        converted_root="cifar-100-by-class"),
}


def download_dataset(name, dest_dir, *, url=None, progress=True):
    """Downloads, verifies and extracts a published dataset, or reuses an earlier result.

    Args:
        name: a key of :data:`SOURCES`: "caltech256", "caltech101", "tinyimagenet" or
            "cifar100".
        dest_dir: folder that receives the archive and the extracted dataset; created
            if missing.
        url: download from this address (a mirror) instead of the official one; the
            file must still match the official md5.
        progress: print a progress line (megabytes, %, MB/s, time left) on stderr while
            downloading.

    Returns:
        The folder-per-class root, ``dest_dir / SOURCES[name].root_name``, e.g.
        ``dest_dir/256_ObjectCategories`` or ``dest_dir/cifar-100-by-class``.

    Raises:
        UserError: unknown name, network failure, checksum mismatch (the file is
            deleted), a full disk, an unsafe archive or contents a converter refuses (the
            verified archive is kept), or a dataset folder at the destination that this
            function did not finish writing.
    """
    if name not in SOURCES:
        close = difflib.get_close_matches(name, SOURCES, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown dataset {name!r}.{hint} Valid datasets: {', '.join(SOURCES)}")
    source = SOURCES[name]
    url = url or source.url
    dest_dir = pathlib.Path(dest_dir)
    if dest_dir.exists() and not dest_dir.is_dir():
        raise UserError(f"the download folder {dest_dir} is a file. Pass a folder path instead.")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise UserError(f"cannot create the download folder {dest_dir}: permission denied. "
                        f"Download somewhere you can write{_data_route(source, ', or ')}.")
    if not os.access(dest_dir, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to the download folder {dest_dir}: permission denied. "
                        f"Download somewhere you can write{_data_route(source, ', or ')}.")

    root = dest_dir / source.root_name
    if (root / COMPLETE_MARKER).is_file():
        return root
    if root.exists():
        # Not ours (ours appear with the marker in one rename), so it may be the user's data.
        raise UserError(
            f"{root} exists but was not completely extracted by download_dataset (no "
            f"{COMPLETE_MARKER} marker inside). If it is a dataset you placed there, pass it "
            "with --data instead of downloading; otherwise delete it and run again.")

    archive_path = dest_dir / source.filename
    manual_route = _manual_route(source, dest_dir)
    if archive_path.is_file():
        # Renamed into place only after its md5 matched, but a copied-in file was not.
        _verify_md5(archive_path, md5_of_file(archive_path), source,
                    origin=f"{archive_path} (found in the download folder)", manual_route=manual_route)
    else:
        part_path = dest_dir / (source.filename + ".part")
        received_md5 = fetch(url, part_path, label=name, progress=progress, manual_route=manual_route)
        _verify_md5(part_path, received_md5, source, origin=url, manual_route=manual_route)
        os.replace(part_path, archive_path)

    _extract_into_place(source, archive_path, dest_dir / f"{name}.extracting", root)
    archive_path.unlink()
    return root


def _extract_into_place(source, archive_path, work_dir, root):
    """Extracts (and converts) into ``work_dir``, marks the tree complete, renames it to ``root``.

    The archive's md5 has matched, so it is kept whatever happens here: on failure the
    partial extraction is deleted and a rerun extracts the archive again.

    Raises:
        UserError: the archive was refused or does not hold the dataset, the converter
            refused its contents, or writing failed (a full disk names the space needed).
    """
    extracted_sizes = []  # uncompressed bytes of each archive extracted so far
    try:
        if work_dir.exists():
            shutil.rmtree(work_dir)  # left by an interrupted run; its contents are unknown
        work_dir.mkdir()
        dataset_root = _extract_and_convert(source, archive_path, work_dir, extracted_sizes)
        (dataset_root / COMPLETE_MARKER).write_text(f"{source.filename} md5 {source.md5}\n")
    except (UserError, OSError) as error:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise _kept_archive_error(source, archive_path, work_dir, error, sum(extracted_sizes)) from error
    os.replace(dataset_root, root)  # atomic: root appears whole, marker included
    shutil.rmtree(work_dir)  # the rest of the archive (e.g. Caltech-101's annotations)


def _extract_and_convert(source, archive_path, work_dir, extracted_sizes):
    """Extracts the archive (and the one nested in it) into ``work_dir`` and converts it.

    Args:
        source: the dataset's :class:`DatasetSource`.
        archive_path: the verified archive.
        work_dir: the empty extraction folder.
        extracted_sizes: a list that receives each extracted archive's uncompressed size
            in bytes, so a caller can say how much space a failed run needed.

    Returns:
        The folder-per-class tree inside ``work_dir``.

    Raises:
        UserError: see :func:`_extract_into_place`.
        OSError: the converter could not write (e.g. a full disk).
    """
    extracted_sizes.append(extract_archive(archive_path, work_dir))
    if source.inner_archive is not None:
        inner_paths = sorted(work_dir.rglob(source.inner_archive))
        if len(inner_paths) != 1:
            raise UserError(
                f"{archive_path} should contain exactly one {source.inner_archive}. "
                f"Received: {len(inner_paths)}.")
        extracted_sizes.append(extract_archive(inner_paths[0], work_dir))
    extracted_root = work_dir / source.archive_root
    if not extracted_root.is_dir():
        found = sorted(path.name for path in work_dir.iterdir())
        raise UserError(
            f"{archive_path} did not contain the dataset folder {source.archive_root}. "
            f"Received top-level entries: {', '.join(found) or '(none)'}.")
    if source.convert is None:
        return extracted_root
    class_root = work_dir / source.converted_root
    source.convert(extracted_root, class_root)
    return class_root


def _kept_archive_error(source, archive_path, work_dir, error, extracted_bytes):
    """Returns the one-line UserError for a failed extraction or conversion of a kept archive.

    Args:
        source: the dataset's :class:`DatasetSource`.
        archive_path: the verified archive, which stays where it is.
        work_dir: the extraction folder, deleted by the caller.
        error: the UserError or OSError that stopped extraction or conversion.
        extracted_bytes: uncompressed bytes of the archives fully extracted before it.
    """
    kept = f"{work_dir} was deleted and the verified archive {archive_path} kept"
    if isinstance(error, DiskFullError):  # extracting: its need, plus the archives before it
        needed = f"{size_text(extracted_bytes + error.needed_bytes)} (the archive's uncompressed size)"
        action, os_error = f"extract {source.filename}", error.os_error
    elif isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:  # converting or marking
        if source.convert is None:  # nothing extracted yet if the folder could not be made
            needed = (f"{size_text(extracted_bytes)} (the archive's uncompressed size)"
                      if extracted_bytes else "room for the extracted archive")
            action = f"extract {source.filename}"
        else:
            needed = (f"{size_text(extracted_bytes)} for the extracted archive, plus room for the "
                      "converted copy beside it")
            action = f"convert {source.filename} to a folder per class"
        os_error = error
    elif isinstance(error, OSError):
        return UserError(f"extracting or converting {source.filename} under {archive_path.parent} "
                         f"failed: {error}. {kept}: a rerun extracts it without downloading.")
    else:
        return UserError(f"{error} {kept}: its md5 is the official one, so a rerun uses it "
                         "again rather than downloading it.")
    message = disk_full_message(archive_path.parent, action, needed, os_error)
    return UserError(f"{message} {kept}: free some space and run again to extract it without "
                     "downloading.")


def _manual_route(source, dest_dir):
    """Returns how to get the dataset without this download, right for its format.

    Every dataset can be downloaded by hand into the download folder. Only one that
    extracts to a folder per class (the Caltech ones) can also be passed with --data:
    the others' archives need the converter.
    """
    route = (f"download {source.url} yourself as {dest_dir / source.filename}: a file found there "
             "is checked and used without downloading")
    return route + _data_route(source, "; or ")


def _data_route(source, joiner):
    """Returns ``joiner`` + the --data route for a dataset that extracts to a folder per class, else ""."""
    if source.convert is not None:
        return ""
    return f"{joiner}extract {source.filename} yourself and pass its {source.archive_root} folder with --data"


def _verify_md5(path, received_md5, source, *, origin, manual_route):
    """Deletes ``path`` and raises UserError unless ``received_md5`` is the source's md5.

    Args:
        path: the file whose md5 was computed.
        received_md5: its md5, hex.
        source: the :class:`DatasetSource` it should match.
        origin: where the file came from (a URL), for the message.
        manual_route: how to get the file by hand (see :func:`_manual_route`).
    """
    if received_md5 == source.md5:
        return
    path.unlink()
    raise UserError(
        f"checksum mismatch for {source.filename} from {origin}: expected md5 {source.md5}, "
        f"received md5 {received_md5}. The file was deleted. Run again to download it "
        f"afresh; if it keeps failing, {manual_route}.")
