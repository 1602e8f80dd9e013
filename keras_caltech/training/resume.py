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
from keras_caltech.runs import (BEST_MODEL, DISK_CACHE, STATE_FILE, checked_path, checkpoint_damage,
                                holds_only_leftovers, open_run, read_json, remove_partial_files, replaced_atomically)
from keras_caltech.training.distribute import tf_config_task_index, with_worker_suffix
from keras_caltech.training.history import HISTORY_FILE, history_value, truncate_history
from keras_caltech.training.lock import lock_run_folder

STATE_FORMAT = 1
# The files a new run writes after config.yaml and before its first epoch, in that order
# (trainer._new_run); a run stopped before it wrote them all is scanned and split again.
DATA_FILES = ("class_names.json", "splits.json", "data_report.json")


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
        raise _damaged(path)
    if not isinstance(meta, dict):
        raise _damaged(path, "its meta is not a JSON object")
    if meta.get("format") != STATE_FORMAT:
        raise UserError(f"{path} has format {meta.get('format')!r}; this version reads format {STATE_FORMAT}")
    problem = _meta_problem(meta)
    if problem:
        raise _damaged(path, problem)
    return arrays, meta


def _damaged(path, detail=None):
    """The UserError for a damaged or hand-edited state file, saying how to go on without it."""
    return UserError(f"{path} is damaged{f' ({detail})' if detail else ''}; delete it to restart this run from "
                     f"epoch 1 (best.keras and history.csv are kept)")


def _meta_problem(meta):
    """What is wrong in a state file's meta dict (damaged or edited by hand), or None."""
    def is_count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    epochs, best, best_epoch = meta.get("epochs_completed"), meta.get("best"), meta.get("best_epoch")
    if not is_count(epochs):
        return f"epochs_completed is {epochs!r}, not a number of epochs"
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        return f"best is {best!r}, not a number"
    if best_epoch is not None and not (is_count(best_epoch) and 1 <= best_epoch <= epochs):
        return f"best_epoch is {best_epoch!r}, not an epoch from 1 to {epochs}"
    variables = meta.get("variables")
    if not isinstance(variables, dict) or not all(isinstance(variables.get(group), list)
                                                  for group in ("model", "optimizer")):
        return "its list of saved variables is missing"
    return None


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
        names = [f"{group}_{index:05d}" for index in range(len(meta["variables"][group]))]
        missing = [name for name in names if name not in arrays]
        if missing:
            raise _damaged(path, f"array {missing[0]} is missing")
        saved = [arrays[name] for name in names]
        not_numbers = [name for name, array in zip(names, saved) if array.dtype.kind not in "biuf"]
        if not_numbers:
            raise _damaged(path, f"array {not_numbers[0]} holds {saved[names.index(not_numbers[0])].dtype}, "
                                 "not numbers")
        # Compared by shape, not by path: auto-generated names (seed_generator_3) depend on
        # what else the process created before.
        if [array.shape for array in saved] != [tuple(v.shape) for v in variables]:
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
    run_dir = checked_path(run_dir, "--resume")
    worker_dir = with_worker_suffix(run_dir, tf_config_task_index())
    if worker_dir.is_dir():
        run_dir = worker_dir  # a multi-worker run's worker N keeps its own folder (see distribute.py)
    if not run_dir.exists():
        raise UserError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise UserError(f"--resume expects a run folder, received a file: {run_dir}")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file() and any(run_dir.iterdir()) and holds_only_leftovers(run_dir):
        raise UserError(f"{run_dir} holds no config.yaml: its run stopped (or is still starting) before saving "
                        "it, so nothing was trained. Start the run again with the command that created it; "
                        "the same --output-dir works")
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); --resume takes a folder "
                        "that train.py created")
    if config_path.stat().st_size == 0:
        # Written atomically, so empty means damaged; an empty YAML would silently mean "defaults".
        raise UserError(f"{config_path} is empty (damaged run folder); the run cannot be resumed")
    return load_config(config_path, overrides)


def unwritten_data_files(run_dir):
    """The :data:`DATA_FILES` a run stopped before writing, when it trained no epoch; else [].

    Such a run is started again in place: scanned and split as before (its config.yaml
    holds the settings that were chosen from the data). A run with a training state
    and a data file missing is damaged, not stopped: :func:`reopen_run_folder` names the file.
    """
    run_dir = pathlib.Path(run_dir)
    if (run_dir / STATE_FILE).exists():
        return []
    return [name for name in DATA_FILES if not (run_dir / name).is_file()]


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
    cache_dir = run_dir / DISK_CACHE
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
    truncate_history(run_dir / HISTORY_FILE, state.epochs_completed, log)
    if state.best_epoch is not None and state.best_epoch == state.epochs_completed:
        checkpoint.save()  # the restored weights are the best ones; best.keras may predate them
    elif state.best_epoch is not None and checkpoint_damage(run_dir / BEST_MODEL):
        state = _replace_lost_checkpoint(run_dir, model, checkpoint, state, log)
    log(f"resuming {run_dir} after epoch {state.epochs_completed}"
        + (f" (best {checkpoint.monitor} {state.best:.4f} in epoch {state.best_epoch})"
           if state.best_epoch and state.best is not None else ""))
    return state.epochs_completed


def _replace_lost_checkpoint(run_dir, model, checkpoint, state, log):
    """Saves the restored (last completed) epoch as best.keras when the best epoch's file is missing or damaged.

    The best epoch's weights are gone with the file; the last completed epoch's are the
    best that remain, and later epochs replace them only if they do better. The state
    file is saved again to agree. Returns the new :class:`TrainingState`.
    """
    path = run_dir / BEST_MODEL
    value = history_value(run_dir / HISTORY_FILE, state.epochs_completed - 1, checkpoint.monitor)
    log(f"warning: {path} {checkpoint_damage(path)}: the weights of epoch {state.best_epoch}, the best so far, are "
        f"lost; saving those of epoch {state.epochs_completed}, the last completed, in its place")
    checkpoint.best, checkpoint.best_epoch = value, state.epochs_completed
    checkpoint.save()
    state = TrainingState(state.epochs_completed, value, state.epochs_completed)
    save_training_state(run_dir / STATE_FILE, model, state)
    return state
