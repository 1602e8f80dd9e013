"""Resuming a stopped run from its last completed epoch: ``python train.py --resume runs/NAME``.

At the end of every epoch the trainer commits ``training_state.npz``, one file written
atomically (temporary file, fsync, rename), holding everything the next epoch depends on:

- every model variable, including BatchNorm statistics and the Dropout layer's
  random-seed state (``model.save_weights`` leaves seed generators out);
- every optimizer variable, including its step counter, which is also the position of
  the learning-rate schedule (our schedules count optimizer steps);
- the epochs completed and the best monitored value and its epoch.

The rest needs no saving because it is a function of (seed, epoch): the order
(shuffled or class-balanced), augmentation and MixUp/CutMix of each epoch (see
``EpochBatches`` in data/pipeline.py). So a resumed run computes the same epochs as an
uninterrupted one; with ``train.deterministic`` they match bit for bit. A run of several
phases (phases.py) holds the state of the phase it is in: the trainer rebuilds the
phases before it without training them and restores the state into the phase of the
last completed epoch.

A kill at any moment leaves either the previous state or the new one, never half a file
(leftover temporaries are deleted on resume and never read). The order at an epoch's end
makes the other files agree with the state: the history row is written first (a row
beyond the state is dropped on resume), then the state, then ``best.keras`` (if the kill
came between the last two, the state's weights are the best ones and are saved again).

Why not ``keras.callbacks.BackupAndRestore``: it writes its weights and its JSON in place
(a kill mid-write leaves a damaged file it then loads), uses ``save_weights`` (no seed
generator state), and restores the epoch only through ``model.fit``, which we cannot use
under every strategy (see loop.py).
"""

import contextlib
import csv
import dataclasses
import json
import pathlib
import shutil
import signal
import threading
import zipfile

import keras
import numpy as np

from keras_caltech.config import load_config
from keras_caltech.data.scan import ScanResult
from keras_caltech.errors import UserError
from keras_caltech.runs import open_run, read_json, remove_partial_files, replaced_atomically
from keras_caltech.training.distribute import tf_config_task_index, with_worker_suffix
from keras_caltech.training.lock import lock_run_folder

STATE_FILE = "training_state.npz"
HISTORY_FILE = "history.csv"
STATE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """Where a run stands after its last completed epoch.

    Attributes:
        epochs_completed: epochs whose state is saved; training resumes at this 0-based epoch.
        best: best monitored value so far, or None.
        best_epoch: 1-based epoch of ``best``, or None.
    """

    epochs_completed: int = 0
    best: float | None = None
    best_epoch: int | None = None


@contextlib.contextmanager
def sigint_deferred():
    """Holds back Ctrl-C until the block ends, so a save in progress completes first."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _state_variables(model):
    """The variables a resume restores: (group name, list of Keras variables)."""
    return [("model", model.variables), ("optimizer", model.optimizer.variables)]


def save_training_state(path, model, state):
    """Writes ``state`` and the model's and optimizer's variables to ``path`` atomically."""
    arrays, paths = {}, {}
    for group, variables in _state_variables(model):
        paths[group] = [variable.path for variable in variables]
        for index, variable in enumerate(variables):
            arrays[f"{group}_{index:05d}"] = np.asarray(variable.numpy())
    meta = {"format": STATE_FORMAT, **dataclasses.asdict(state), "variables": paths}
    arrays["meta"] = np.array(json.dumps(meta))
    with sigint_deferred(), replaced_atomically(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)


def _read_state_file(path, names=None):
    """Returns ({array name: array} of ``names`` (default all) without "meta", meta dict) of a state file.

    Raises:
        UserError: the file is damaged or of another format.
    """
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in (saved.files if names is None else names)}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise UserError(f"{path} is damaged; delete it to restart this run from epoch 1 "
                        f"(best.keras and history.csv are kept)")
    if meta.get("format") != STATE_FORMAT:
        raise UserError(f"{path} has format {meta.get('format')!r}; this version reads format {STATE_FORMAT}")
    return arrays, meta


def completed_epochs(path):
    """The epochs completed according to the state file ``path``; 0 when it does not exist.

    Raises:
        UserError: the file is damaged.
    """
    path = pathlib.Path(path)
    return int(_read_state_file(path, ["meta"])[1]["epochs_completed"]) if path.exists() else 0


def load_training_state(path, model):
    """Restores the variables saved by :func:`save_training_state` into ``model``.

    The model must be compiled and its optimizer built, in the strategy's scope.

    Returns:
        The :class:`TrainingState`, or None when ``path`` does not exist (no epoch completed).

    Raises:
        UserError: the file is damaged or was saved from a different model or optimizer.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return None
    arrays, meta = _read_state_file(path)
    for group, variables in _state_variables(model):
        saved = [arrays.get(f"{group}_{index:05d}") for index in range(len(meta["variables"][group]))]
        # Compared by shape, not by path: auto-generated names (seed_generator_3) depend on
        # what else the process created before.
        if [None if array is None else array.shape for array in saved] != [tuple(v.shape) for v in variables]:
            raise UserError(f"{path} was saved from a different {group} ({len(saved)} variables) than the one "
                            f"config.yaml builds ({len(variables)} variables); was the run folder's config edited?")
        for variable, array in zip(variables, saved):
            variable.assign(array)
    return TrainingState(epochs_completed=int(meta["epochs_completed"]), best=meta["best"],
                         best_epoch=meta["best_epoch"])


class SaveTrainingState(keras.callbacks.Callback):
    """Commits the training state at the end of every epoch that kept a finite loss.

    Must run after the history logger and before ``checkpoint`` (see the module docstring).

    Args:
        path: the state file.
        checkpoint: the run's BestCheckpoint, whose decision this epoch is recorded; None
            in a phase that writes no best.keras (a progressive stage below the final size).
        nan_guard: the run's StopOnNonFiniteLoss; a diverged epoch is never a resume point.
    """

    def __init__(self, path, checkpoint, nan_guard):
        super().__init__()
        self.path = pathlib.Path(path)
        self.checkpoint = checkpoint
        self.nan_guard = nan_guard

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard.stopped_epoch is not None:
            return
        best, best_epoch, improved = None, None, None
        if self.checkpoint is not None:
            best, best_epoch = self.checkpoint.best, self.checkpoint.best_epoch
            improved = self.checkpoint.improved_value(logs)
        if improved is not None:
            best, best_epoch = improved, epoch + 1
        save_training_state(self.path, self.model, TrainingState(epoch + 1, best, best_epoch))


def load_run_config(run_dir, overrides=()):
    """Reads the config a run was trained with, for ``--resume``.

    On worker N of a multi-worker run (TF_CONFIG), reads ``run_dir-workerN`` when it
    exists: that worker's machine may hold no copy of the chief's folder.

    Raises:
        UserError: not a run folder, or its config.yaml is damaged.
    """
    run_dir = pathlib.Path(run_dir)
    worker_dir = with_worker_suffix(run_dir, tf_config_task_index())
    if worker_dir.is_dir():
        run_dir = worker_dir  # a multi-worker run's worker N keeps its own folder (see distribute.py)
    if not run_dir.exists():
        raise UserError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise UserError(f"--resume expects a run folder, received a file: {run_dir}")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); --resume takes a folder "
                        "that train.py created")
    if config_path.stat().st_size == 0:
        # Written atomically, so empty means damaged; an empty YAML would silently mean "defaults".
        raise UserError(f"{config_path} is empty (damaged run folder); the run cannot be resumed")
    return load_config(config_path, overrides)


def reopen_run_folder(run_dir, moved_data=None, log=print):
    """Locks a run folder for resuming and reads back its data split.

    ``moved_data``: the dataset's new folder, if it moved since the run started;
    ``splits.json`` is rewritten to point there.

    Returns:
        (run_dir, scan, splits): the folder, a ScanResult with the saved classes, dataset
        root and excluded files, and the saved {"train"/"val"/"test": [(path, label), ...]}.

    Raises:
        UserError: another process uses the folder, a file it needs is missing or damaged,
            or ``moved_data`` lacks some of the run's images.
    """
    run_dir = pathlib.Path(run_dir)
    lock_run_folder(run_dir)
    if moved_data is not None:
        run = open_run(run_dir, moved_data, relocate=True)
        log(f"{run_dir / 'splits.json'} now points at the dataset's new folder {moved_data}")
    else:
        run = open_run(run_dir, check_images=True)  # a moved dataset fails here, naming --data, not mid-epoch
    removed = remove_partial_files(run_dir)
    if removed:
        log(f"deleted {len(removed)} partial file(s) left by the interrupted run: {', '.join(removed)}")
    cache_dir = run_dir / "cache"
    if any(cache_dir.glob("*.lockfile")):
        shutil.rmtree(cache_dir)  # tf.data's disk cache was cut off mid-write: rebuild it
    report = read_json(run_dir / "data_report.json")
    scan = ScanResult(root=run.root, class_names=run.class_names, files=[],
                      excluded=[(entry["path"], entry["reason"]) for entry in report["excluded"]])
    return run_dir, scan, run.splits


def restore_training(run_dir, model, checkpoint, log=print):
    """Brings a reopened run back to its last completed epoch.

    Restores the model and optimizer, the checkpoint's best value, ``best.keras`` if the
    kill came just before it was written, and cuts ``history.csv`` back to the completed
    epochs.

    Args:
        run_dir: the reopened run folder.
        model: the model of the phase that trained the last completed epoch, compiled,
            its optimizer built (``loop.build_training_state``), in the strategy's scope.
        checkpoint: the run's BestCheckpoint, its model set to ``model``.
        log: where the one-line report goes.

    Returns:
        The number of completed epochs: the 0-based epoch to train next.
    """
    run_dir = pathlib.Path(run_dir)
    state = load_training_state(run_dir / STATE_FILE, model) or TrainingState()
    checkpoint.best, checkpoint.best_epoch = state.best, state.best_epoch
    if state.best_epoch is not None and state.best_epoch == state.epochs_completed:
        checkpoint.save()  # the restored weights are the best ones; best.keras may predate them
    _truncate_history(run_dir / HISTORY_FILE, state.epochs_completed)
    log(f"resuming {run_dir} after epoch {state.epochs_completed}"
        + (f" (best {checkpoint.monitor} {state.best:.4f} in epoch {state.best_epoch})" if state.best_epoch else ""))
    return state.epochs_completed


def _truncate_history(path, epochs):
    """Keeps the complete rows of epochs 0..epochs-1 in Keras' CSVLogger file."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [row for row in reader if header and len(row) == len(header) and _is_epoch_below(row[0], epochs)]
    if not rows:
        path.unlink()  # CSVLogger starts a new file with its header
        return
    with replaced_atomically(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _is_epoch_below(text, epochs):
    try:
        return 0 <= int(text) < epochs
    except ValueError:
        return False
