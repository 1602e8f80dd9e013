"""Fetches one file over HTTP into a ``.part`` file, resuming where an earlier run stopped.

:func:`fetch` streams a URL into a partial file and computes its md5 on the way. A
rerun after an interruption (a dropped connection, a full disk, a killed process) asks
for the missing tail with an HTTP ``Range`` request; a server that ignores it sends the
whole file, which is then written from the start. What the file is, whether its md5 is
the right one and what to do with it are :mod:`keras_caltech.data.download`'s business.

Only the Python standard library (urllib, hashlib): a dependency such as ``requests``
would buy little for one streaming GET.
"""

import hashlib
import http.client
import urllib.error
import urllib.request

from keras_caltech import __version__
from keras_caltech.data.archives import DISK_FULL_ERRNOS, disk_full_message, size_text
from keras_caltech.errors import UserError
from keras_caltech.progress import ProgressLine

_CHUNK_BYTES = 1 << 20
_TIMEOUT_SECONDS = 60  # per socket operation, not for the whole download


def fetch(url, part_path, *, label, progress, manual_route):
    """Downloads ``url`` into ``part_path``, resuming a partial file where the server allows.

    Args:
        url: the address to fetch.
        part_path: the partial file; appended to when the server honours ``Range``.
        label: what is downloaded (a dataset name), shown on the progress line.
        progress: whether to print the progress line (megabytes, %, MB/s) on stderr.
        manual_route: how to get the file without this download, ending the network
            error messages (e.g. "download <url> yourself as <path>").

    Returns:
        The md5 (hex) of the complete file at ``part_path``.

    Raises:
        UserError: the server could not be reached, answered with an error, or closed
            the connection early, or the disk filled up (the partial file is kept for
            the next run to resume).
    """
    offset = part_path.stat().st_size if part_path.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"keras_caltech/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # "Range not satisfiable": the previous run got every byte but stopped before
            # the rename. The md5 check decides whether the file is whole.
            return md5_of_file(part_path)
        raise _network_error(url, f"HTTP {error.code} {error.reason}", manual_route) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _network_error(url, getattr(error, "reason", error), manual_route) from error

    with response:
        resumed = bool(offset) and response.status == 206 and _range_start(response) == offset
        if resumed:
            digest = md5_of_file(part_path, as_hash=True)  # continue over the kept bytes
        else:
            offset = 0  # the server ignored Range and sends the whole file: start over
            digest = hashlib.md5(usedforsecurity=False)
        length = response.headers.get("Content-Length")
        total_bytes = offset + int(length) if length and length.isdigit() else None
        received = offset
        # A download is worth its final line in a log however short it was: how much
        # came, how fast. Leaving the with block prints it, before any error below.
        with ProgressLine(label, total_bytes, unit="MB", format_amount=_megabytes, start=offset,
                          always_print_final=True, enabled=progress) as line:
            try:
                with open(part_path, "ab" if resumed else "wb") as part_file:
                    while chunk := response.read(_CHUNK_BYTES):
                        part_file.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        line.update(received)
            except (OSError, http.client.HTTPException) as error:
                if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:  # the write, not the socket
                    raise _part_disk_full_error(part_path, error, total_bytes) from error
                raise _network_error(
                    url, f"{error} after {received} bytes; run again to resume", manual_route) from error
    if total_bytes is not None and received != total_bytes:
        raise _network_error(
            url, f"the connection closed after {received} of {total_bytes} bytes; "
                 "run again to resume", manual_route)
    return digest.hexdigest()


def md5_of_file(path, *, as_hash=False):
    """Returns the md5 of a file (hex, or the hashlib object to continue feeding)."""
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not security
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest if as_hash else digest.hexdigest()


def _megabytes(byte_count):
    """``byte_count`` in megabytes with one decimal (e.g. 1183000000 -> "1,183.0")."""
    return f"{byte_count / 1e6:,.1f}"


def _part_disk_full_error(part_path, error, total_bytes):
    """Returns the UserError for a download stopped by a full disk; the ``.part`` file stays.

    Args:
        part_path: the partial file; what it holds is what a rerun resumes from.
        error: the ``OSError`` (errno ``ENOSPC`` or ``EDQUOT``) from writing it.
        total_bytes: the whole file's size, or None when the server did not send it.
    """
    kept_bytes = part_path.stat().st_size  # may end part-way through the failed chunk
    if total_bytes is None:
        needed = "more space (the server did not say how much)"
    else:
        needed = f"{size_text(total_bytes - kept_bytes)} more, {size_text(total_bytes)} in all"
    message = disk_full_message(part_path.parent, f"download {part_path.name.removesuffix('.part')}",
                                needed, error)
    return UserError(f"{message} The {size_text(kept_bytes)} received are kept in {part_path}: "
                     "free some space and run again to resume the download.")


def _range_start(response):
    """Returns the first byte offset of a 206 response's ``Content-Range``, or None."""
    content_range = response.headers.get("Content-Range", "")  # "bytes 100-199/200"
    unit, _, span = content_range.partition(" ")
    start = span.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _network_error(url, reason, manual_route):
    """Returns the UserError for a failed download, with the manual-download route."""
    return UserError(
        f"could not download {url}: {reason}. Check the connection and run again, or "
        f"{manual_route}.")
