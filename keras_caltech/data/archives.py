"""Safe extraction of downloaded tar and zip archives.

An archive is untrusted input until extracted: a member named ``../x`` or ``/etc/x``, or
a link pointing out of the target, could write anywhere the user can. Every member is
checked before anything is written, and a refused archive raises
:class:`~keras_caltech.errors.UserError` naming the member:

- Only files and folders are extracted. The datasets hold images and text, never links,
  so a symbolic or hard link (and in a tar, a device or FIFO) is refused whatever it
  points to. Checking where a link leads is not enough: CVE-2025-4517 chains symlinks
  until their resolved path is longer than PATH_MAX, where ``os.path.realpath`` (which
  the tarfile ``"data"`` filter relies on) stops resolving, so a link out of the folder
  passes the filter on Pythons before the June 2025 security releases (3.11.7, for
  one). Zip has no link type, but a zip entry whose Unix mode says "symlink" is one to
  ``unzip``.
- A member name that is absolute or has a ``..`` component is refused. The ``"data"``
  filter would silently strip a leading ``/`` and extract the member inside the target,
  and ``zipfile`` would rewrite ``../x`` to ``x``; neither is the archive we published.

Tar members then still go through Python's ``"data"`` filter, a second line of defence.
The checks read the whole index first: for a compressed tar that decompresses it twice.

A full disk (or quota) during extraction raises :class:`DiskFullError`, which names the
space the archive needs (its uncompressed size, from the index) and the space free.
"""

import errno
import lzma
import os
import pathlib
import shutil
import stat
import tarfile
import zipfile
import zlib

from keras_caltech.errors import UserError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(UserError):
    """Writing failed because the disk, or the user's quota, is full.

    Attributes:
        needed_bytes: how many bytes the whole write needs (an archive's uncompressed
            size), or None when unknown.
        os_error: the ``OSError`` (errno ``ENOSPC`` or ``EDQUOT``) that stopped it.
    """

    def __init__(self, message, needed_bytes, os_error):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.os_error = os_error


def disk_full_message(folder, action, needed, os_error):
    """Returns one line saying that ``folder``'s disk is too full to ``action``.

    Args:
        folder: an existing folder on the full disk; its free space is read now.
        action: what failed, e.g. "extract cifar-100-python.tar.gz".
        needed: the space the action needs, as text (see :func:`size_text`).
        os_error: the ``OSError`` with errno ``ENOSPC`` or ``EDQUOT``.
    """
    free_bytes = shutil.disk_usage(folder).free
    return (f"not enough disk space in {folder} to {action} ({os.strerror(os_error.errno)}): "
            f"it needs {needed}, and {size_text(free_bytes)} is free there.")


def size_text(num_bytes):
    """Returns ``num_bytes`` for a message: "1,183.0 MB", or "912 bytes" below a megabyte."""
    if num_bytes >= 1_000_000:
        return f"{num_bytes / 1e6:,.1f} MB"
    return f"{num_bytes:,} bytes"


def extract_archive(archive_path, target_dir):
    """Extracts a tar (optionally gzip/bz2/xz compressed) or zip archive into ``target_dir``.

    Args:
        archive_path: the archive file.
        target_dir: an existing directory; every member lands inside it.

    Returns:
        The archive's uncompressed size in bytes (the sum of its file members' sizes).

    Raises:
        DiskFullError: the disk or quota filled up; members written so far stay in
            ``target_dir``, which the caller deletes.
        UserError: the file is neither a tar nor a zip archive, is corrupt, could not be
            written, or has a member that is not a file or folder (a link, a device) or
            whose name would land outside ``target_dir`` (absolute, or with ``..``).
            A refused archive has written nothing.
    """
    archive_path = pathlib.Path(archive_path)
    target_dir = pathlib.Path(target_dir)
    if zipfile.is_zipfile(archive_path):
        return _extract_zip(archive_path, target_dir)
    if tarfile.is_tarfile(archive_path):
        return _extract_tar(archive_path, target_dir)
    raise UserError(f"{archive_path} is neither a tar nor a zip archive, so it cannot be "
                    "extracted.")


def unsafe_member_reason(name, target_dir):
    """Returns why archive member ``name`` must not be extracted into ``target_dir``, or None.

    Args:
        name: the member's path as stored in the archive (``/``-separated).
        target_dir: the directory the archive is extracted into.

    Returns:
        A short reason ("absolute path", ...) or None when the member is safe by name.
        The member's type (links) is checked separately, by :func:`_refuse_unsafe_member`.
    """
    member_path = pathlib.PurePosixPath(name)
    if member_path.is_absolute():
        return "absolute path"
    if ".." in member_path.parts:
        return "parent-directory (..) component"
    target_root = pathlib.Path(target_dir).resolve()
    if not (target_root / name).resolve().is_relative_to(target_root):
        return "resolves outside the extraction folder"
    return None


def _refuse_unsafe_member(archive_path, name, link_kind, target_dir):
    """Raises UserError if a member is a link or special file, or unsafe by name.

    Args:
        archive_path: the archive, for the message.
        name: the member's name in the archive.
        link_kind: None for a file or folder; else what the member is, with its target
            ("a symbolic link to '../x'").
        target_dir: the extraction folder.
    """
    if link_kind is not None:
        raise UserError(
            f"refused to extract {archive_path}: member {name!r} is {link_kind}, and the dataset "
            "archives hold only files and folders. Nothing was extracted.")
    reason = unsafe_member_reason(name, target_dir)
    if reason is not None:
        raise UserError(
            f"refused to extract {archive_path}: member {name!r} has an unsafe path ({reason}). "
            "An archive may only write inside its extraction folder, so nothing was extracted.")


def _tar_link_kind(member):
    """Returns None for a tar file or folder member, else what it is (see _refuse_unsafe_member)."""
    if member.isreg() or member.isdir():
        return None
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    return "a device, FIFO or other special file"


def _zip_link_kind(member):
    """Returns None for a zip file or folder entry, or "a symbolic link" when its Unix mode says so.

    zipfile itself would write such an entry as a file holding the link's target, but
    ``unzip`` (and anyone re-extracting the archive by hand) makes it a real link.
    """
    unix_mode = member.external_attr >> 16  # the high 16 bits, set by Unix zip tools
    return "a symbolic link" if stat.S_ISLNK(unix_mode) else None


def _strict_data_filter(member, target_dir):
    """Tar extraction filter: our name check, then Python's ``"data"`` filter.

    The member list was checked in full before extraction started; this runs the name
    check again per member, as the last check before each write.

    Args:
        member: the ``tarfile.TarInfo`` about to be extracted.
        target_dir: the extraction folder (a string, as tarfile passes it).

    Returns:
        The filtered ``TarInfo`` from ``tarfile.data_filter``.

    Raises:
        tarfile.AbsolutePathError, tarfile.OutsideDestinationError: unsafe member name;
            tarfile's own ``FilterError`` subclasses for unsafe links and special files.
    """
    reason = unsafe_member_reason(member.name, target_dir)
    if reason == "absolute path":
        raise tarfile.AbsolutePathError(member)
    if reason is not None:
        raise tarfile.OutsideDestinationError(member, str(pathlib.Path(target_dir) / member.name))
    return tarfile.data_filter(member, target_dir)


def _extract_tar(archive_path, target_dir):
    """Checks every tar member, then extracts through :func:`_strict_data_filter`.

    See :func:`extract_archive` for arguments, return value and errors.
    """
    try:
        # errorlevel=1 (the default, stated here because safety depends on it): a filter
        # refusal or a failed write raises instead of being logged and skipped.
        with tarfile.open(archive_path, "r:*", errorlevel=1) as archive:
            members = archive.getmembers()  # reads the whole index; nothing is written yet
            for member in members:
                _refuse_unsafe_member(archive_path, member.name, _tar_link_kind(member), target_dir)
            needed_bytes = sum(member.size for member in members if member.isreg())
            try:
                archive.extractall(target_dir, members=members, filter=_strict_data_filter)
            except OSError as error:
                _raise_if_disk_full(error, archive_path, target_dir, needed_bytes)
                raise
    except tarfile.FilterError as error:
        raise UserError(f"refused to extract {archive_path}: tarfile's data filter refused member "
                        f"{error.tarinfo.name!r} ({error}), so the archive stopped there.") from error
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        raise _unreadable(archive_path, target_dir, error) from error
    return needed_bytes


def _extract_zip(archive_path, target_dir):
    """Checks every zip entry, then extracts them; see :func:`extract_archive`."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = archive.infolist()
            for member in members:
                _refuse_unsafe_member(archive_path, member.filename, _zip_link_kind(member),
                                      target_dir)
            needed_bytes = sum(member.file_size for member in members)
            try:
                for member in members:
                    archive.extract(member, target_dir)
            except OSError as error:
                _raise_if_disk_full(error, archive_path, target_dir, needed_bytes)
                raise
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        raise _unreadable(archive_path, target_dir, error) from error
    return needed_bytes


def _raise_if_disk_full(error, archive_path, target_dir, needed_bytes):
    """Raises DiskFullError if ``error`` is a full disk or quota; else returns."""
    if error.errno in DISK_FULL_ERRNOS:
        message = disk_full_message(target_dir, f"extract {archive_path.name}",
                                    f"{size_text(needed_bytes)} (the archive's uncompressed size)",
                                    error)
        raise DiskFullError(message, needed_bytes, error) from error


def _unreadable(archive_path, target_dir, error):
    """Returns the UserError for an archive that could not be read or written out."""
    if isinstance(error, OSError) and error.errno is not None:  # a failed write or read, not bad data
        return UserError(f"extracting {archive_path} into {target_dir} failed: {error}.")
    return UserError(f"{archive_path} could not be extracted ({type(error).__name__}: {error}): "
                     "the archive is damaged.")
