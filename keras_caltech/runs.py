"""The run folder: what a trained model needs to be resumed, re-evaluated, explained or served.

Layout of ``runs/NAME/``::

    config.yaml          the resolved config
    class_names.json     class folder names, in label order
    splits.json          {"root": dataset folder, "train"/"val"/"test": [[relative path, label], ...]}
    normalization.json   {"mode": ..., "mean": [...], "std": [...]} in 0-1 units
    data_report.json     images used per split, files excluded and why
    best.keras           the checkpoint with the best validation accuracy
    history.csv          per-epoch metrics; logs/ for TensorBoard
    training_state.npz   weights, optimizer and RNG state of the last completed epoch (see resume.py)
    .lock                PID of the process using the folder (see lock.py)
    metrics.json         test-split evaluation of best.keras (per TTA mode under "tta")
    curves.png           loss and accuracy per epoch
    confusion_matrix.png, per_class.png, report.html   the evaluation's figures and page

Every file is written to a temporary name and renamed into place, so a killed run
never leaves a half-written file that a later command would trust.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import tempfile
import zipfile

from keras_caltech.config import load_config
from keras_caltech.errors import UserError

BEST_MODEL = "best.keras"
STATE_FILE = "training_state.npz"  # written by training/resume.py
LOCK_FILE = ".lock"  # written by training/lock.py
DISK_CACHE = "cache"  # data.cache=disk's files, kept until training ends (training/trainer.py)


class WriteFailed(UserError):
    """A run folder's file could not be written (a full disk, a read-only folder).

    The file's previous version, if any, is intact: :func:`replaced_atomically` renames
    only a complete file into place.
    """


def _umask_file_mode():
    """The mode ``open()`` gives a new file under this process's umask (read once, at import)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp makes its files private (0600); a run folder's files get the mode any other
# new file gets, so a colleague or a serving container can read them where the umask allows.
FILE_MODE = _umask_file_mode()


@contextlib.contextmanager
def replaced_atomically(path):
    """Yields a temporary path beside ``path``; when the block succeeds, renames it over ``path``.

    The temporary name starts with a dot and contains ``.tmp`` (its suffix stays ``path``'s,
    for writers that infer the format from it). If the block raises, the temporary file
    is deleted; if the process is killed, it stays behind, and
    :func:`remove_partial_files` deletes it before a resume.

    Raises:
        WriteFailed: the file could not be written (an OSError: a full disk, a read-only
            folder); ``path`` keeps its previous content.
    """
    path = pathlib.Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                                 suffix=f".tmp{path.suffix}")
    except OSError as error:
        raise WriteFailed(f"cannot write {path}: {error.strerror}") from error
    os.close(descriptor)
    try:
        yield pathlib.Path(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())  # on disk before the rename makes it visible
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except OSError as error:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise WriteFailed(f"cannot write {path}: {error.strerror or error}"
                          + (" (its previous version is kept)" if path.exists() else "")) from error
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def partial_files(run_dir):
    """The temporary files a killed writer left in ``run_dir`` (see :func:`replaced_atomically`)."""
    return sorted(path for path in pathlib.Path(run_dir).glob(".*.tmp*") if path.is_file())


def remove_partial_files(run_dir):
    """Deletes the temporary files a killed writer left in ``run_dir``; returns their names."""
    removed = partial_files(run_dir)
    for path in removed:
        path.unlink()
    return [path.name for path in removed]


def holds_only_leftovers(path):
    """Whether folder ``path`` holds nothing but a lock file and partial files: a run stopped before writing any."""
    leftovers = set(partial_files(path))
    return all(entry.name == LOCK_FILE or entry in leftovers for entry in pathlib.Path(path).iterdir())


def write_atomically(path, text):
    """Writes ``text`` to ``path`` through a temporary file and an atomic rename."""
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


def write_json(path, value):
    """Writes ``value`` as indented JSON, atomically."""
    write_atomically(path, json.dumps(value, indent=2) + "\n")


def read_json(path):
    """Reads a JSON file of a run folder, naming the file when it is missing or damaged."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.name} is missing from run folder {path.parent}")
    except ValueError:
        raise UserError(f"{path} is not valid JSON (damaged run folder?)")


def create_run_folder(path, flag="--output-dir"):
    """Creates an empty run folder; refuses one that already holds files.

    ``flag``: the command-line flag that named the folder, for the error messages.

    Raises:
        UserError: the folder exists and is not empty, is a file, or cannot be created.
    """
    path = checked_path(path, flag)
    # A lock file alone is left by a run stopped before it wrote anything; lock.py takes
    # it over if its process is gone, and refuses it if it is alive.
    if path.is_dir() and not holds_only_leftovers(path):
        resume = f", or continue it with --resume {path}" if flag == "--output-dir" else ""
        raise UserError(f"run folder {path} already holds files; pick another {flag} "
                        f"(refusing to mix two runs' files){resume}")
    return make_output_folder(path, flag, "run folder")


def make_output_folder(path, flag, what="folder"):
    """Creates the folder ``path`` (and its parents) if it is missing; returns it as a Path.

    Raises:
        UserError: ``path`` is a file, or cannot be created (permissions, a read-only file
            system, a path under /proc); the message names ``flag``.
    """
    path = checked_path(path, flag)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise UserError(f"cannot create {what} {path}: permission denied. Pick a {flag} you can write to")
    except OSError as error:  # e.g. a read-only file system, a path under /proc, a file as a parent
        raise UserError(f"cannot create {what} {path}: {error.strerror}. Pick another {flag}")
    return path


def checked_path(path, flag):
    """``path`` as a Path; raises UserError naming ``flag`` if it holds a NUL byte, which no file name can."""
    if "\0" in str(path):
        raise UserError(f"{flag} must not contain a NUL byte. Received: {str(path)!r}")
    return pathlib.Path(path)


def checkpoint_damage(path):
    """Why the ``.keras`` file ``path`` cannot be loaded, or None if it looks whole.

    Reads the whole zip archive and checks every member's CRC, so a truncated or
    overwritten checkpoint is found before it is used (about a second for 100 MB).

    Returns:
        None, "is missing", or "is damaged (...)". An unreadable file or a folder
        returns None: ``models.loading.load_model_safely`` explains those.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return "is missing"
    if path.is_dir():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except PermissionError:
        return None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError):
        return f"is damaged (not a complete .keras archive: {path.stat().st_size} bytes)"
    return None if bad_member is None else f"is damaged ({bad_member} fails its checksum)"


def _check_model(path):
    """Raises UserError when run folder ``path`` has no loadable ``best.keras``, saying which command fixes it."""
    damage = checkpoint_damage(path / BEST_MODEL)
    if damage is None:
        return
    resume = f"python train.py --resume {path}"
    if (path / STATE_FILE).is_file():  # trained: the last completed epoch's weights are there
        what = (f"run folder {path} has no {BEST_MODEL}, though it trained ({STATE_FILE} is there)"
                if damage == "is missing" else f"{path / BEST_MODEL} {damage}")
        raise UserError(f"{what}. Rebuild it with: {resume} (it saves the last completed epoch's weights as "
                        f"{BEST_MODEL}; those of an earlier best epoch are lost)")
    if damage == "is missing":
        raise UserError(f"run folder {path} has no {BEST_MODEL}: training saved no checkpoint there (still "
                        f"running, or stopped before its first epoch ended: continue it with {resume})")
    raise UserError(f"{path / BEST_MODEL} {damage}, and the run has no {STATE_FILE} to rebuild it from: "
                    f"train it again with {resume}")


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """A finished (or checkpointed) run, read back from disk.

    Attributes:
        path: the run folder.
        config: the resolved Config it was trained with.
        class_names: class folder names in label order.
        root: the dataset folder the split paths are relative to.
        splits: {"train"/"val"/"test": [(relative path, label), ...]}.
    """

    path: pathlib.Path
    config: object
    class_names: list
    root: pathlib.Path
    splits: dict

    @property
    def model_path(self):
        return self.path / BEST_MODEL

    def split_pairs(self, split):
        """A split's saved (relative path, label) pairs, for a command that needs at least one.

        Raises:
            UserError: the split holds no images.
        """
        if not self.splits[split]:
            raise UserError(f"the {split} split of run {self.path} holds no images ({self.path / 'splits.json'})")
        return self.splits[split]

    def split_files(self, split, required=False):
        """Returns (absolute paths, labels) of a split, after checking that its images exist.

        ``required``: the split must hold images (see :meth:`split_pairs`).

        Raises:
            UserError: the dataset folder, or some of the split's images, are gone; or
                (``required``) the split is empty.
        """
        pairs = self.split_pairs(split) if required else self.splits[split]
        remedy = "Restore the dataset there, or give its new place with --data"
        if pairs and not self.root.is_dir():
            raise UserError(f"the dataset folder of {self.path} is gone: {self.root} (from splits.json). {remedy}")
        missing = [relative for relative, _ in pairs if not (self.root / relative).is_file()]
        if missing:
            raise UserError(f"{len(missing)} of the {len(pairs)} {split} images of {self.path} are missing "
                            f"from {self.root}, e.g. {missing[0]}. {remedy}")
        return [self.root / relative for relative, _ in pairs], [label for _, label in pairs]

    def moved_to(self, data):
        """This run with its dataset read from ``data`` (moved, or the run copied elsewhere).

        Raises:
            UserError: ``data`` is not a folder.
        """
        if not pathlib.Path(data).is_dir():
            raise UserError(f"--data {data} is not a folder: give the folder that holds the run's class folders")
        # Resolved: splits.json keeps an absolute root, whichever folder a later command runs in.
        return dataclasses.replace(self, root=pathlib.Path(data).resolve())


def open_run(path, data=None, *, need_model=False, check_images=False, relocate=False):
    """Opens a run folder: its config, classes and splits (not the model).

    The one way every command opens a run; the options say what must be there.

    Args:
        path: the run folder.
        data: the dataset folder, where it is no longer where the run saw it (moved, or
            the run copied to another machine); None: the folder named in splits.json.
        need_model: the folder must hold a whole ``best.keras`` (evaluation, explanation, export).
        check_images: every image of every split must be in the dataset folder.
        relocate: rewrite ``splits.json`` to point at ``data``, once every image is found
            there (a resume with a moved dataset); implies ``check_images``.

    Returns:
        The :class:`RunFolder`.

    Raises:
        UserError: not a folder, a file it needs is missing or damaged, ``data`` is not a
            folder, or (as asked) ``best.keras`` is missing or damaged or some of the
            images are missing.
    """
    path = checked_path(path, "the run folder")
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path} is not a run folder (no config.yaml): pass a folder that train.py created")
    if need_model:
        _check_model(path)
    splits = read_json(path / "splits.json")
    run = RunFolder(path=path, config=load_config(path / "config.yaml"),
                    class_names=read_json(path / "class_names.json"), root=pathlib.Path(splits["root"]),
                    splits={name: [tuple(pair) for pair in splits[name]] for name in ("train", "val", "test")})
    if data is not None:
        run = run.moved_to(data)
    if check_images or relocate:
        for split in run.splits:
            run.split_files(split)  # raises, naming a missing file
    if relocate:
        splits["root"] = str(run.root)
        write_json(path / "splits.json", splits)
    return run
