"""Safe extraction of downloaded tar and zip archives.

An archive is untrusted input until extracted: a member named ``../x`` or ``/etc/x``, or
a symlink pointing out of the target, could write anywhere the user can. Every member is
checked before anything is written, and a refused archive raises
:class:`~keras_caltech.errors.UserError` naming the member.

Tar files go through Python's ``"data"`` extraction filter (which refuses links out of
the target, device files and setuid bits) behind a stricter name check of our own: the
``"data"`` filter silently strips a leading ``/`` and extracts the member inside the
target, while a dataset archive with an absolute member name is not what we published
and is refused. ``zipfile`` has no filter, so zip member names get the same check.
"""

import pathlib
import tarfile
import zipfile

from keras_caltech.errors import UserError


def extract_archive(archive_path, target_dir):
    """Extracts a tar (optionally gzip/bz2/xz compressed) or zip archive into ``target_dir``.

    Args:
        archive_path: the archive file.
        target_dir: an existing directory; every member lands inside it.

    Raises:
        UserError: the file is neither a tar nor a zip archive, is corrupt, or has a member
            that would land outside ``target_dir`` (absolute path, ``..`` component,
            or a link pointing outside). Members extracted before the refused one stay
            inside ``target_dir``; the caller deletes it.
    """
    archive_path = pathlib.Path(archive_path)
    target_dir = pathlib.Path(target_dir)
    if zipfile.is_zipfile(archive_path):
        _extract_zip(archive_path, target_dir)
    elif tarfile.is_tarfile(archive_path):
        _extract_tar(archive_path, target_dir)
    else:
        raise UserError(f"{archive_path} is neither a tar nor a zip archive, so it cannot be "
                        "extracted.")


def unsafe_member_reason(name, target_dir):
    """Returns why archive member ``name`` must not be extracted into ``target_dir``, or None.

    Args:
        name: the member's path as stored in the archive (``/``-separated).
        target_dir: the directory the archive is extracted into.

    Returns:
        A short reason ("absolute path", ...) or None when the member is safe by name.
        Links are checked separately, by the tar ``"data"`` filter.
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


def _refusal(archive_path, member_name, reason):
    """Returns the UserError for a member that would escape the extraction folder."""
    return UserError(
        f"refused to extract {archive_path}: member {member_name!r} has an unsafe path "
        f"({reason}). An archive may only write inside its extraction folder, so nothing "
        "was extracted outside it. The file is not the expected dataset archive.")


def _strict_data_filter(member, target_dir):
    """Tar extraction filter: our name check, then Python's ``"data"`` filter.

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
    """Extracts a tar archive through :func:`_strict_data_filter`; see :func:`extract_archive`."""
    try:
        # errorlevel=1 (the default, stated here because safety depends on it): a filter
        # refusal raises instead of being logged and skipped.
        with tarfile.open(archive_path, "r:*", errorlevel=1) as archive:
            archive.extractall(target_dir, filter=_strict_data_filter)
    except tarfile.FilterError as error:
        name = error.tarinfo.name
        reason = unsafe_member_reason(name, target_dir) or _describe_link_error(error)
        raise _refusal(archive_path, name, reason) from error
    except (tarfile.TarError, EOFError, OSError) as error:
        # OSError covers both a corrupt gzip stream and a full disk; the message names both.
        raise UserError(
            f"{archive_path} could not be extracted ({error}): the archive is damaged or "
            "the disk is full."
        ) from error


def _describe_link_error(error):
    """Returns a short reason for a ``tarfile.FilterError`` raised by the ``"data"`` filter."""
    if isinstance(error, (tarfile.LinkOutsideDestinationError, tarfile.AbsoluteLinkError)):
        return f"a link to {error.tarinfo.linkname!r}, outside the extraction folder"
    if isinstance(error, tarfile.SpecialFileError):
        return "a device or other special file"
    return "resolves outside the extraction folder"


def _extract_zip(archive_path, target_dir):
    """Extracts a zip archive after checking every member name; see :func:`extract_archive`."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = archive.infolist()
            # Check all names first: zipfile.extract would silently rewrite "../x" to "x".
            for member in members:
                reason = unsafe_member_reason(member.filename, target_dir)
                if reason is not None:
                    raise _refusal(archive_path, member.filename, reason)
            for member in members:
                # zipfile writes a symlink entry as a plain file holding the link text,
                # so no link can point out of target_dir.
                archive.extract(member, target_dir)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise UserError(
            f"{archive_path} could not be extracted ({error}): the archive is damaged or "
            "the disk is full."
        ) from error
