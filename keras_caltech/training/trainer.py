"""The training story: data -> splits -> pipeline -> model -> fit -> run folder.

Evaluation and export follow in ``keras_caltech.workflow``, one layer up.

A run trains in phases (phases.py), each one call of the training loop (loop.py) under
any tf.distribute strategy (distribute.py) and precision (precision.py). It can be
resumed from its last completed epoch (resume.py), and holds its run folder's lock
while it works (lock.py).
"""

import contextlib
import dataclasses
import errno
import math
import pathlib
import shutil
import sys
import time

import keras
import tensorflow as tf
import yaml

from keras_caltech.plotting import charts
from keras_caltech.config import config_to_dict
from keras_caltech.data import synthetic
from keras_caltech.data.pipeline import (NORMALIZATION_MODES, EpochBatches, channel_statistics,
                                         images_checked_on_error, split_files)
from keras_caltech.data.scan import scan_dataset
from keras_caltech.data.splits import SPLIT_NAMES, stratified_split
from keras_caltech.errors import UserError
from keras_caltech.models import create_model, get_model_entry
from keras_caltech.training import auto, phases, recipes
from keras_caltech.training.callbacks import BestCheckpoint, EpochProgressLines, StopOnNonFiniteLoss
from keras_caltech.training.distribute import make_strategy, worker_index, worker_run_dir
from keras_caltech.training.lock import lock_run_folder
from keras_caltech.training.loop import build_training_state, fit
from keras_caltech.training.memory import check_training_memory
from keras_caltech.training.precision import set_precision
from keras_caltech.training.resume import (STATE_FILE, SaveTrainingState, completed_epochs, reopen_run_folder,
                                           restore_training, unwritten_data_files)
from keras_caltech.runs import (BEST_MODEL, DISK_CACHE, WriteFailed, checked_path, create_run_folder, read_json,
                                remove_partial_files, write_atomically, write_json)

# Dataset statistics from a sample: enough for three means and deviations, and fast on Caltech-256.
STATISTICS_SAMPLE_IMAGES = 2000
# Why a file of a run folder could not be written: full, over quota, read-only, too large, failing.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO)


def dataset_root(data):
    """The dataset folder of a DataConfig; generates the synthetic dataset on first use."""
    if data.root:
        return pathlib.Path(data.root)
    try:
        return synthetic.ensure_dataset(data.synthetic_dir, images_per_class=data.synthetic_images_per_class,
                                        seed=data.synthetic_seed)
    except OSError as error:
        raise UserError(f"cannot write the synthetic dataset to {data.synthetic_dir}: {error.strerror}. "
                        "Set data.synthetic_dir to a folder you can write to") from None


def default_run_dir(config):
    """``runs/<config name>-<date>-<time>``: a new folder per run."""
    return pathlib.Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def normalization_for(config, entry, train_files, class_names):
    """Returns {"mode", "mean", "std"} (0-1 units) for the model's normalization layer."""
    mode = config.data.normalization
    if entry.input_normalization is not None:
        return {"mode": "backbone", "mean": None, "std": None}
    if mode == "dataset":
        # Statistics of the training split only, at the model's input size, unaugmented,
        # from a seeded random sample (the unshuffled order is class by class).
        dataset = EpochBatches(*train_files, class_names, config.data.image_size, config.data.batch_size,
                               seed=config.train.seed)(0)
        mean, std = channel_statistics(
            dataset, max_batches=math.ceil(STATISTICS_SAMPLE_IMAGES / config.data.batch_size))
    else:
        mean, std = NORMALIZATION_MODES[mode]
    return {"mode": mode, "mean": list(mean), "std": list(std)}


def build_model(config, num_classes, normalization=None, weights=None):
    """Creates the config's model; ``normalization`` as written by :func:`normalization_for`.

    ``weights`` (None, "imagenet" or a file) is for pretrained models; a model trained
    from scratch refuses it with the registry's error.
    """
    normalization = normalization or {}
    kwargs = {} if config.model.dropout is None else {"dropout": config.model.dropout}
    if config.model.head != "pooled":  # the default head needs no option: most models have no choice
        kwargs["head"] = config.model.head
    if normalization.get("mean") is not None:
        kwargs.update(mean=normalization["mean"], std=normalization["std"])
    return create_model(config.model.name, num_classes, config.data.image_size, weights=weights, **kwargs)


def choose_from_split(config, root, files, class_names, log, run_dir="."):
    """Splits ``files`` and chooses the config's auto settings from the split; returns (config, splits).

    ``run_dir``: where the run folder will be (a disk cache chosen for ``data.cache: auto`` goes in it).
    """
    data = config.data
    splits = stratified_split(files, class_names, test_fraction=data.test_fraction, val_fraction=data.val_fraction,
                              train_per_class=data.train_per_class, test_per_class=data.test_per_class,
                              seed=data.split_seed, protocol=data.protocol)
    config = auto.resolve_auto(config, [pathlib.Path(root) / path for path, _ in splits["train"]],
                               len(splits["val"]), get_model_entry(config.model.name), log=log, run_dir=run_dir)
    return config, splits


def write_run_config(run_dir, config):
    """Writes the resolved ``config`` as the run's ``config.yaml``, which ``load_config`` reads back."""
    write_atomically(pathlib.Path(run_dir) / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _new_run(config, run_dir, log, in_place=False):
    """Scans the data, splits it and writes a new, locked run folder's data files.

    Settings left to the data (``training/auto.py``) are chosen from the training split
    here, and written into the run's config.yaml.

    ``in_place``: ``run_dir`` is a run stopped before it saved its data files
    (``resume.unwritten_data_files``); they are written again, into it, beside its config.yaml.

    Returns:
        (config with its auto settings chosen, run_dir, scan, splits).
    """
    root = dataset_root(config.data)
    log(f"scanning {root} ...")
    scan = scan_dataset(root, include=config.data.include_classes, exclude=config.data.exclude_classes,
                        cache_dir=config.data.cache_dir, workers=config.data.scan_workers)
    class_names = scan.class_names
    config, splits = choose_from_split(config, scan.root, scan.files, class_names, log, run_dir)
    _check_memory(config, len(class_names))

    if pathlib.Path(run_dir).resolve().is_relative_to(scan.root.resolve()):
        raise UserError(f"the run folder {run_dir} would be inside the dataset folder {scan.root}, where a "
                        "later scan would take it for a class; pick an --output-dir outside it")
    run_dir = pathlib.Path(run_dir) if in_place else create_run_folder(run_dir)
    lock_run_folder(run_dir)
    remove_partial_files(run_dir)
    if not in_place:  # a stopped run's config.yaml stays as saved (a resume's --strategy is not written into it)
        write_run_config(run_dir, config)
    write_json(run_dir / "class_names.json", class_names)
    write_json(run_dir / "splits.json", {"root": str(scan.root), **{name: splits[name] for name in SPLIT_NAMES}})
    write_json(run_dir / "data_report.json", {
        "root": str(scan.root), "num_classes": len(class_names),
        "images": {name: len(splits[name]) for name in SPLIT_NAMES},
        "num_excluded": len(scan.excluded),
        "excluded": [{"path": path, "reason": reason} for path, reason in scan.excluded],
        "exclude_classes_not_found": scan.classes_not_found})
    return config, run_dir, scan, splits


def train(config, output_dir=None, *, resume=False, moved_data=None, verbose=None, log=print):
    """Trains ``config`` and writes its run folder, with its best model as ``best.keras``.

    Args:
        config: a resolved Config.
        output_dir: the run folder; default ``runs/<name>-<timestamp>``.
        resume: continue the run in ``output_dir`` from its last completed epoch;
            ``config`` must be its saved config.yaml (see ``resume.load_run_config``).
        moved_data: with ``resume``, the dataset's new folder if it moved since the run started.
        verbose: 0 silent, 1 a progress bar, 2 one line per epoch; default 1 on a terminal, else 2.
        log: where progress lines go.

    Returns:
        A dict: run_dir (pathlib.Path), class_names, num_excluded (files the scan left
        out), epochs_run, best_epoch, monitor and best_monitor_value (what chose
        ``best.keras``), chief (False on every multi-worker worker but the chief).

    The run folder stays locked (``lock.lock_run_folder``) until the caller, a
    ``lock.holds_run_folder`` function such as ``workflow.train_evaluate_export``, returns:
    evaluation and export write into it too.

    Raises:
        UserError: bad data, config or model choice, a run folder in use, or a loss that became NaN.
    """
    entry = get_model_entry(config.model.name)  # fail on a bad name before any heavy work
    # ... and on pretrained weights the model cannot take (auto settings are chosen after the scan).
    phases.plan_phases(auto.stand_in(config, entry.default_image_size))
    strategy = make_strategy(config.train.strategy)  # before other TensorFlow ops: multi-worker sets up the runtime
    set_precision(config.train.precision, log=log)
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    run_dir = worker_run_dir(checked_path(output_dir, "--output-dir") if output_dir else default_run_dir(config),
                             strategy)
    config, run_dir, scan, splits = _open_run_folder(config, run_dir, resume, moved_data, log)
    class_names = scan.class_names
    sizes = (f"train/val = {len(splits['train'])}/{len(splits['val'])} images (train_val protocol: val "
             f"selects the checkpoint and is reported)" if config.data.protocol == "train_val" else
             f"train/val/test = {'/'.join(str(len(splits[name])) for name in SPLIT_NAMES)} images")
    log(f"{len(class_names)} classes; {sizes}; "
        f"{len(scan.excluded)} file(s) excluded (see {run_dir / 'data_report.json'})")
    files = {name: split_files(scan.root, splits[name]) for name in SPLIT_NAMES if splits[name]}
    with _stops_resumably(run_dir, files):
        normalization = _normalization(config, entry, files["train"], class_names, run_dir, resume, log)

    # Recipes (training/phases.py, training/recipes.py): one call of the training loop
    # per phase (progressive sizes, frozen-backbone head, fine-tuning), on data with the
    # recipe's labels, mixing, sampling and class weights.
    runner = phases.PhaseRunner(
        config, lambda phase_config, weights: build_model(phase_config, len(class_names), normalization, weights),
        len(class_names), math.ceil(len(splits["train"]) / config.data.batch_size), log=log)
    log(f"training {config.model.name} for {runner.total_epochs} epochs on {strategy.num_replicas_in_sync} "
        f"replica(s) ({', '.join(device.device_type for device in tf.config.list_logical_devices())}), "
        f"{config.train.precision}{', XLA' if config.train.jit_compile else ''}")
    checkpoint = BestCheckpoint(run_dir / BEST_MODEL, monitor="val_accuracy" if "val" in files else "accuracy")
    nan_guard = StopOnNonFiniteLoss()
    with _stops_resumably(run_dir, files):
        epoch = _train_phases(runner, strategy, files, class_names, run_dir, checkpoint, nan_guard,
                              resume=resume, verbose=verbose, log=log)
        if (run_dir / "history.csv").is_file():  # none when a resume trained nothing after it was deleted
            charts.plot_curves(run_dir / "history.csv", run_dir / "curves.png")
    _remove_disk_cache(run_dir, log)
    if nan_guard.stopped_epoch is not None:
        last_good = (f"the last good checkpoint is {run_dir / BEST_MODEL} (epoch {checkpoint.best_epoch})"
                     if checkpoint.best_epoch else "no checkpoint was saved before it")
        raise UserError(f"training stopped: the loss became NaN or infinite in epoch {nan_guard.stopped_epoch}; "
                        f"{last_good}. Try a lower train.learning_rate")

    return {"run_dir": run_dir, "class_names": class_names, "num_excluded": len(scan.excluded),
            "epochs_run": epoch, "best_epoch": checkpoint.best_epoch, "monitor": checkpoint.monitor,
            "best_monitor_value": checkpoint.best, "chief": worker_index(strategy) == 0}


def _open_run_folder(config, run_dir, resume, moved_data, log):
    """Starts a new run folder, or reopens a stopped one; returns (config, run_dir, scan, splits).

    A run stopped before it saved its data split (``resume.DATA_FILES``) trained nothing:
    it is scanned and split again, in place, with the settings its config.yaml saved.
    """
    if resume:
        missing = unwritten_data_files(run_dir)
        if not missing:
            run_dir, scan, splits = reopen_run_folder(run_dir, moved_data, log=log)
            _check_memory(config, len(scan.class_names))
            return config, run_dir, scan, splits
        log(f"{run_dir} stopped before it saved {', '.join(missing)}, so nothing was trained: "
            f"scanning and splitting the data again, into the same folder")
        if moved_data is not None:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(moved_data)))
    else:
        log(recipes.describe_recipe(config))
    return _new_run(config, run_dir, log, in_place=resume)


def _remove_disk_cache(run_dir, log):
    """Removes the data.cache=disk files once training ends: only epochs read them (evaluation reads the images).

    A stopped run keeps them, for its resume.
    """
    cache = run_dir / DISK_CACHE
    if cache.is_dir():
        size = sum(path.stat().st_size for path in cache.rglob("*") if path.is_file())
        shutil.rmtree(cache, ignore_errors=True)
        log(f"removed the training cache from the run folder ({size / 1024**3:.1f} GB)")


def _check_memory(config, num_classes):
    """Refuses a data.image_size whose training batches cannot fit in memory (training/memory.py).

    Before any image is decoded at that size, and for a new run before its folder exists.
    """
    check_training_memory(build_model(config, num_classes), config.data.image_size, config.data.batch_size)
    keras.utils.set_random_seed(config.train.seed)  # the throwaway model drew from it: the run's weights stay its own


def _normalization(config, entry, train_files, class_names, run_dir, resume, log):
    """The run's normalization.json: read back, or computed from the training split and written.

    A run stopped before it wrote the file computes it on resume: it is a function of the
    training split and the seed, so the values are the ones the stopped run would have saved.
    """
    path = run_dir / "normalization.json"
    if resume and path.is_file():
        return read_json(path)
    if resume:
        log(f"{path.name} was not saved before the run stopped: computing it from the training split")
    normalization = normalization_for(config, entry, train_files, class_names)
    write_json(path, normalization)
    return normalization


@contextlib.contextmanager
def _stops_resumably(run_dir, files):
    """Ends training that cannot go on, without a bug, in one line saying how to continue.

    A file of the run that cannot be written (a full disk) leaves the last completed
    epoch's state, written atomically; an image that changed since the scan is named.
    """
    resume = f"python train.py --resume {run_dir}"
    try:
        with images_checked_on_error([path for paths, _ in files.values() for path in paths],
                                     f"restore it and continue with: {resume}, or start a new run, which scans "
                                     f"the dataset again and leaves it out"):
            yield
    except WriteFailed as error:
        raise UserError(f"{error}. The run stays resumable from its last completed epoch: free some space, "
                        f"then continue with: {resume}") from None
    except OSError as error:  # history.csv and the logs, appended to by Keras
        if error.errno not in _WRITE_ERRORS:
            raise
        raise UserError(f"cannot write in run folder {run_dir}: {error.strerror}. The run stays resumable from "
                        f"its last completed epoch: free some space, then continue with: {resume}") from None


def _train_phases(runner, strategy, files, class_names, run_dir, checkpoint, nan_guard, *, resume, verbose, log):
    """Runs the training loop once per phase of ``runner``'s plan; returns the epochs completed.

    A resumed run restores its state into the phase of its last completed epoch. The
    phases before it are entered but not trained: the next phase starts from their
    models and optimizers, as in the uninterrupted run. Stops after a phase whose loss
    became NaN (``nan_guard.stopped_epoch``).
    """
    config = runner.config
    # append: a run of several phases trains once per phase, all into one history.
    history_log = keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True)
    tensorboard = ([keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False)]
                   if config.train.tensorboard else [])
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    class_weight = recipes.class_weights(files["train"][1], len(class_names), config.train.class_weight)
    epoch = completed_epochs(run_dir / STATE_FILE) if resume else 0  # epochs done, = the next epoch's index
    if epoch > runner.total_epochs:
        raise UserError(f"{run_dir} already trained {epoch} epochs, more than the {runner.total_epochs} its "
                        f"config.yaml now plans (was train.epochs lowered?). Set it back to {epoch} or more in "
                        f"{run_dir / 'config.yaml'} to resume, or evaluate the run as it stands with: "
                        f"python -m keras_caltech evaluate {run_dir}")
    restore_phase = next(phase for phase in runner.plan if phase.last_epoch >= max(epoch, 1))
    fit_data = {}
    for phase in runner.plan:
        with strategy.scope():  # the model's, optimizer's and metrics' variables: one copy per replica
            model = runner.enter(phase)
        if phase.image_size not in fit_data:
            fit_data[phase.image_size] = recipes.make_fit_data(phase.config, files, class_names, run_dir / DISK_CACHE,
                                                               config.data.image_size, class_weight)
        train_batches, val_data = fit_data[phase.image_size]
        build_training_state(model, strategy, val_data if val_data is not None else train_batches(phase.first_epoch))
        if resume and phase is restore_phase:
            checkpoint.set_model(model)
            epoch = restore_training(run_dir, model, checkpoint, log=log)
        if epoch >= phase.last_epoch:
            continue  # trained before the run was interrupted
        # Order matters at an epoch's end: history row, then training state, then best.keras
        # (see resume.py). A stage below the final size writes no best.keras, so its
        # training state records no best either.
        state = SaveTrainingState(run_dir / STATE_FILE, checkpoint if phase.saves_best else None, nan_guard)
        lines = [EpochProgressLines(len(train_batches))] if verbose == 2 else []
        callbacks = phases.callbacks_for(phase, [nan_guard, history_log, *tensorboard, *lines, state, checkpoint])
        initial_epoch = max(epoch, phase.first_epoch)
        history = fit(model, strategy, train_batches, epochs=phase.last_epoch, steps_per_epoch=len(train_batches),
                      initial_epoch=initial_epoch, validation_data=val_data, callbacks=callbacks,
                      verbose=verbose, jit_compile=config.train.jit_compile)
        epoch = initial_epoch + len(history.epoch)
        if nan_guard.stopped_epoch is not None:
            break
    return epoch
