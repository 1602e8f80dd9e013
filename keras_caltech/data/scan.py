"""Class discovery and the once-per-tree scan that keeps broken files out of every epoch.

``image_dataset_from_directory`` raises on the first undecodable file mid-epoch, and
real Caltech downloads hold a stray non-image file (``198.spider/RENAME2``), an empty
nested folder (``056.dog/greg``), grayscale and CMYK JPEGs, and, from other sources,
truncated or zero-byte files. The scan decodes every candidate once with the very
decoder the pipeline uses, in parallel, keeps what decodes, and records why the rest
was excluded. Results are cached per file (size and modification time), so a second
run over an unchanged tree decodes nothing, and a first scan that is stopped (Ctrl-C)
or killed resumes from its last save instead of from zero.
"""

import concurrent.futures
import dataclasses
import difflib
import hashlib
import json
import os
import pathlib
import sys
import time

import tensorflow as tf

from keras_caltech.data.pixel_limit import MAX_PIXELS, ImageRefused, check_pixels  # noqa: F401 (scan.MAX_PIXELS)
from keras_caltech.errors import UserError
from keras_caltech.progress import ProgressLine

# The extensions image_dataset_from_directory accepts; anything else is reported, not read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# 2: MAX_PIXELS lowered, PNG/GIF/BMP sizes checked; 3: every GIF frame, WebP and JPEG XL (data/pixel_limit.py)
SCAN_CACHE_VERSION = 3
# How often a scan that is decoding saves the verdicts so far. Rewriting the cache of a
# 30,607-image tree (2.2 MB of JSON) takes ~30 ms: 0.2% of the time at this interval,
# and a killed first scan loses at most this much work.
CACHE_SAVE_SECONDS = 15.0


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """The usable images of a folder-per-class tree.

    Attributes:
        root: the dataset folder (absolute).
        class_names: class folder names in sorted order; a label is an index into it.
        files: (path relative to root, label) for every image that decodes.
        excluded: (path relative to root, reason) for every file left out.
        classes_not_found: exclude_classes entries that matched no folder.
    """

    root: pathlib.Path
    class_names: list
    files: list
    excluded: list
    classes_not_found: list = dataclasses.field(default_factory=list)


def _matches(folder_name, wanted):
    """True if ``folder_name`` (e.g. ``257.clutter``) is named in ``wanted`` with or without its number."""
    bare = folder_name.split(".", 1)[1] if "." in folder_name and folder_name.split(".", 1)[0].isdigit() \
        else folder_name
    return folder_name in wanted or bare in wanted


def discover_classes(root, include=(), exclude=()):
    """Returns (class folder names in sorted order, exclude names that matched nothing).

    Args:
        root: a folder with one subfolder per class (``NNN.name`` or any name).
        include: keep only these classes (folder names or names without the number).
        exclude: drop these classes, e.g. ``257.clutter`` or ``BACKGROUND_Google``.

    Raises:
        UserError: missing or empty root, an include name that matches no class, or
            fewer than two classes left.
    """
    root = pathlib.Path(root)
    if not root.exists():
        raise UserError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {root} (expected one subfolder per class)")
    try:
        folders = sorted(entry.name for entry in root.iterdir()
                         if entry.is_dir() and not entry.name.startswith("."))
    except PermissionError:
        raise UserError(f"cannot read dataset folder (permission denied): {root}")
    if not folders:
        raise UserError(f"dataset folder {root} has no class subfolders "
                        "(expected a tree like 001.ak47/001_0001.jpg)")
    _check_class_folders(root, folders)
    if include:
        unknown = [name for name in include if not any(_matches(folder, {name}) for folder in folders)]
        if unknown:
            close = difflib.get_close_matches(unknown[0], folders, n=3)
            raise UserError(f"data.include_classes names unknown class(es) {unknown}"
                            + (f"; closest: {', '.join(close)}" if close else "")
                            + f". {len(folders)} classes exist in {root}")
        folders = [folder for folder in folders if _matches(folder, set(include))]
    not_found = [name for name in exclude if not any(_matches(folder, {name}) for folder in folders)]
    folders = [folder for folder in folders if not _matches(folder, set(exclude))]
    if len(folders) < 2:
        raise UserError(f"dataset {root} has {len(folders)} class(es) after include/exclude "
                        f"({folders}); a classifier needs at least 2")
    return folders, not_found


def _check_class_folders(root, folders):
    """Raises UserError for a subfolder that is not a class: a link back into the tree, or a run folder.

    Either would silently become a class of images: the whole dataset again, or the
    figures a run wrote.
    """
    resolved_root = root.resolve()
    for folder in folders:
        path = root / folder
        if resolved_root.is_relative_to(path.resolve()):
            raise UserError(f"class folder {path} links back to the dataset folder (or above it), so the "
                            "whole dataset would become one class; remove the link")
        if (path / "config.yaml").is_file() and (path / "splits.json").is_file():
            raise UserError(f"{path} is a run folder of train.py, not a class; move it out of the dataset "
                            "folder (run folders belong under runs/)")


def header_size(data):
    """(width, height) of an encoded image, read from its header without decoding it.

    Returns None for bytes of no image format, and for an image the pixel limit refuses
    (:func:`keras_caltech.data.pixel_limit.check_pixels`).
    """
    try:
        return check_pixels(data)
    except ImageRefused:
        return None


def check_image(path):
    """Decodes one file as the pipeline will, unless its header is over the pixel limit.

    Returns:
        None if usable, else the reason.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        data = tf.io.read_file(str(path))
        check_pixels(data, str(path))  # cheap, so a huge image is refused before it is decoded
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        height, width = int(image.shape[0]), int(image.shape[1])
        if height == 0 or width == 0:
            return "decodes to an empty image"
        return None
    except ImageRefused as refused:
        return refused.reason
    except tf.errors.PermissionDeniedError:
        return "cannot be read: permission denied"
    except tf.errors.OpError as error:
        return "cannot be decoded: " + (error.message.splitlines()[0] if error.message else type(error).__name__)
    except OSError as error:
        return f"cannot be read: {error.strerror or error}"


def _cache_path(cache_dir, root):
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return pathlib.Path(cache_dir) / f"scan-{digest}.json"


def _load_cache(path):
    try:
        cache = json.loads(path.read_text())
        return cache["files"] if cache.get("version") == SCAN_CACHE_VERSION else {}
    except (OSError, ValueError, KeyError):
        return {}  # no cache or a damaged one: rescan, never trust it


def _save_cache(cache_file, root, cache):
    """Writes the scan cache atomically; a folder that cannot hold it costs a rescan, not the run.

    Returns:
        True if saved, False (after a warning on stderr) if not.
    """
    temporary = cache_file.with_suffix(".tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps({"version": SCAN_CACHE_VERSION, "root": str(root), "files": cache}))
        os.replace(temporary, cache_file)  # atomic: a killed scan never leaves half a cache
        return True
    except OSError as error:
        print(f"warning: cannot save the scan cache in {cache_file.parent} ({error.strerror}); the next run "
              "scans again. Set data.cache_dir to a folder you can write to", file=sys.stderr)
        return False


def _check_files(root, to_check, cache, cache_file, *, workers, progress):
    """Decodes files in parallel, recording each verdict in ``cache`` and saving it as it goes.

    The cache is saved to ``cache_file`` (None: never) every CACHE_SAVE_SECONDS, at the end,
    and when the scan is interrupted, so a stopped first scan of a big tree is not lost.
    Only checks that finished are recorded; a file being decoded when a scan was killed is
    simply checked again next time.

    Args:
        root: the dataset folder.
        to_check: (path relative to root, [size, mtime_ns]) of each file to decode.
        cache: {relative path: [size, mtime_ns, reason]}, updated in place.
        cache_file, workers, progress: as :func:`scan_dataset`.

    Returns:
        {relative path: None if usable, else the reason}.
    """
    verdicts, unsaved, last_save = {}, 0, time.monotonic()

    def save():
        nonlocal cache_file, unsaved, last_save
        if cache_file and unsaved and not _save_cache(cache_file, root, cache):
            cache_file = None  # one warning, not one every CACHE_SAVE_SECONDS
        unsaved, last_save = 0, time.monotonic()

    # Decoding releases the GIL inside TensorFlow ops, so threads use every core.
    pool = concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1)
    futures = []
    try:
        with ProgressLine(f"scanning {root.name}", len(to_check), enabled=progress) as line:
            futures = [pool.submit(check_image, root / relative) for relative, _ in to_check]
            for (relative, key), future in zip(to_check, futures):
                reason = future.result()
                verdicts[relative] = reason
                cache[relative] = key + [reason]
                unsaved += 1
                line.advance()
                if time.monotonic() - last_save >= CACHE_SAVE_SECONDS:
                    save()
    except BaseException:
        # Ctrl-C, or a check that failed unexpectedly: drop the files not yet started, let the
        # few being decoded finish (one image each), and keep every verdict that completed,
        # including those finished out of order, before the exception goes on.
        pool.shutdown(wait=True, cancel_futures=True)
        for (relative, key), future in zip(to_check, futures):
            if relative not in verdicts and future.done() and not future.cancelled() \
                    and future.exception() is None:
                cache[relative] = key + [future.result()]
                unsaved += 1
        save()
        raise
    pool.shutdown()
    save()
    return verdicts


def scan_dataset(root, *, include=(), exclude=(), cache_dir=None, workers=0, progress=True):
    """Finds every usable image of a folder-per-class tree.

    Args:
        root: dataset folder.
        include, exclude: class selection, see :func:`discover_classes`.
        cache_dir: where per-tree scan results are cached, saved while the scan runs so
            an interrupted scan resumes; None disables the cache.
        workers: decoding threads; 0 means one per CPU core.
        progress: draw a progress line on stderr while files are decoded (none when
            the cache holds every file's verdict).

    Returns:
        A :class:`ScanResult`.

    Raises:
        UserError: as :func:`discover_classes`, or no usable image in the tree.
    """
    root = pathlib.Path(root).resolve()
    class_names, not_found = discover_classes(root, include, exclude)
    candidates, excluded = [], []
    for label, folder in enumerate(class_names):
        for directory, subfolders, names in os.walk(root / folder):
            subfolders.sort()  # walk order (and so file order) is the same on every machine
            for name in sorted(names):
                relative = os.path.relpath(os.path.join(directory, name), root)
                if name.startswith("."):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    candidates.append((relative, label))
                else:
                    excluded.append((relative, "not an image file (extension)"))

    cache_file = _cache_path(cache_dir, root) if cache_dir else None
    cache = _load_cache(cache_file) if cache_file else {}
    verdicts, to_check = {}, []
    for relative, _ in candidates:
        try:
            stat = os.stat(root / relative)
        except OSError as error:
            verdicts[relative] = f"cannot be read: {error.strerror}"
            continue
        key = [stat.st_size, stat.st_mtime_ns]
        cached = cache.get(relative)
        if cached is not None and cached[:2] == key:
            verdicts[relative] = cached[2]
        else:
            to_check.append((relative, key))
    if to_check:
        verdicts.update(_check_files(root, to_check, cache, cache_file, workers=workers, progress=progress))

    files = [(relative, label) for relative, label in candidates if verdicts[relative] is None]
    excluded += [(relative, verdicts[relative]) for relative, _ in candidates if verdicts[relative]]
    if not files:
        raise UserError(f"dataset {root} has no decodable images (.jpg, .jpeg, .png, .bmp, .gif) "
                        f"in its {len(class_names)} class folders")
    return ScanResult(root=root, class_names=class_names, files=files, excluded=sorted(excluded),
                      classes_not_found=not_found)
