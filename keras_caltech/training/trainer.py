"""The training story: data -> splits -> pipeline -> model -> fit -> evaluation -> run folder.

A run can be resumed from its last completed epoch (resume.py), trains under any
tf.distribute strategy (distribute.py, loop.py) and precision (precision.py), and holds
its run folder's lock while it works (lock.py).
"""

import math
import pathlib
import sys
import time

import keras
import tensorflow as tf
import yaml

from keras_caltech import plotting
from keras_caltech.config import config_to_dict
from keras_caltech.data import synthetic
from keras_caltech.data.augment import build_augmenter, load_size
from keras_caltech.data.pipeline import (NORMALIZATION_MODES, EpochBatches, channel_statistics, make_dataset,
                                         materialize_split)
from keras_caltech.data.scan import discover_classes, scan_dataset
from keras_caltech.data.splits import SPLIT_NAMES, stratified_split
from keras_caltech.errors import UserError
from keras_caltech.evaluation.evaluate import evaluate_model
from keras_caltech.models import create_model, get_model_entry
from keras_caltech.models.loading import load_model_safely
from keras_caltech.training.callbacks import BestCheckpoint, StopOnNonFiniteLoss
from keras_caltech.training.distribute import make_strategy, worker_run_dir
from keras_caltech.training.lock import holds_run_folder, lock_run_folder
from keras_caltech.training.loop import build_training_state, fit
from keras_caltech.training.optim import make_optimizer
from keras_caltech.training.precision import set_precision
from keras_caltech.training.resume import (STATE_FILE, SaveTrainingState, reopen_run_folder,
                                           restore_training)
from keras_caltech.training.run_folder import (BEST_MODEL, create_run_folder, read_json, write_atomically,
                                               write_json)

# Dataset statistics from a sample: enough for three means and deviations, and fast on Caltech-256.
STATISTICS_SAMPLE_IMAGES = 2000


def dataset_root(data):
    """The dataset folder of a DataConfig; generates the synthetic dataset on first use."""
    if data.root:
        return pathlib.Path(data.root)
    return synthetic.ensure_dataset(data.synthetic_dir, images_per_class=data.synthetic_images_per_class,
                                    seed=data.synthetic_seed)


def default_run_dir(config):
    """``runs/<config name>-<date>-<time>``: a new folder per run."""
    return pathlib.Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def normalization_for(config, entry, train_view, class_names):
    """Returns {"mode", "mean", "std"} (0-1 units) for the model's normalization layer."""
    mode = config.data.normalization
    if entry.input_normalization is not None:
        return {"mode": "backbone", "mean": None, "std": None}
    if mode not in NORMALIZATION_MODES:
        raise UserError(f"unknown data.normalization {mode!r}. Valid modes: {', '.join(NORMALIZATION_MODES)}")
    if mode == "dataset":
        # Statistics of the training split only, at the model's input size, unaugmented.
        dataset = make_dataset(train_view, class_names, config.data.image_size, config.data.batch_size)
        mean, std = channel_statistics(
            dataset, max_batches=math.ceil(STATISTICS_SAMPLE_IMAGES / config.data.batch_size))
    else:
        mean, std = NORMALIZATION_MODES[mode]
    return {"mode": mode, "mean": list(mean), "std": list(std)}


def build_model(config, num_classes, normalization=None):
    """Creates the config's model; ``normalization`` as written by :func:`normalization_for`."""
    normalization = normalization or {}
    kwargs = {"dropout": config.model.dropout}
    if normalization.get("mean") is not None:
        kwargs.update(mean=normalization["mean"], std=normalization["std"])
    return create_model(config.model.name, num_classes, config.data.image_size, **kwargs)


def dry_run(config, log=print):
    """Builds the model the config describes and prints its summary; trains nothing."""
    class_names, _ = discover_classes(dataset_root(config.data), config.data.include_classes,
                                      config.data.exclude_classes)
    model = build_model(config, len(class_names))
    model.summary(print_fn=log)
    log(f"{config.model.name}: {model.count_params():,} parameters, {len(class_names)} classes, "
        f"{config.data.image_size} px input")
    return model


def _new_run(config, run_dir, log):
    """Scans the data, splits it and writes a new, locked run folder's data files.

    Returns:
        (run_dir, scan, splits).
    """
    root = dataset_root(config.data)
    log(f"scanning {root} ...")
    scan = scan_dataset(root, include=config.data.include_classes, exclude=config.data.exclude_classes,
                        cache_dir=config.data.cache_dir, workers=config.data.scan_workers)
    class_names = scan.class_names
    splits = stratified_split(scan.files, class_names, test_fraction=config.data.test_fraction,
                              val_fraction=config.data.val_fraction,
                              train_per_class=config.data.train_per_class, seed=config.data.split_seed)

    run_dir = create_run_folder(run_dir)
    lock_run_folder(run_dir)
    write_atomically(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    write_json(run_dir / "class_names.json", class_names)
    write_json(run_dir / "splits.json", {"root": str(scan.root), **{name: splits[name] for name in SPLIT_NAMES}})
    write_json(run_dir / "data_report.json", {
        "root": str(scan.root), "num_classes": len(class_names),
        "images": {name: len(splits[name]) for name in SPLIT_NAMES},
        "num_excluded": len(scan.excluded),
        "excluded": [{"path": path, "reason": reason} for path, reason in scan.excluded],
        "exclude_classes_not_found": scan.classes_not_found})
    return run_dir, scan, splits


@holds_run_folder
def train(config, output_dir=None, *, resume=False, verbose=None, log=print):
    """Trains, evaluates and writes a run folder for ``config``.

    Args:
        config: a resolved Config.
        output_dir: the run folder; default ``runs/<name>-<timestamp>``.
        resume: continue the run in ``output_dir`` from its last completed epoch;
            ``config`` must be its saved config.yaml (see ``resume.load_run_config``).
        verbose: 0 silent, 1 a progress bar, 2 one line per epoch; default 1 on a terminal, else 2.
        log: where progress lines go.

    Returns:
        A summary dict: run_dir, top1, top5, mean_per_class_accuracy, num_test,
        num_excluded, epochs_run, best_epoch, seconds.

    Raises:
        UserError: bad data, config or model choice, a run folder in use, or a loss that became NaN.
        TrainingInterrupted: Ctrl-C after the run folder was created (it can be resumed).
    """
    started = time.time()
    entry = get_model_entry(config.model.name)  # fail on a bad name before any heavy work
    strategy = make_strategy(config.train.strategy)  # first: multi-worker sets up TensorFlow's runtime
    set_precision(config.train.precision, log=log)
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    run_dir = worker_run_dir(output_dir or default_run_dir(config), strategy)
    if resume:
        run_dir, scan, splits = reopen_run_folder(run_dir, log=log)
    else:
        run_dir, scan, splits = _new_run(config, run_dir, log)
    class_names = scan.class_names
    log(f"{len(class_names)} classes; train/val/test = "
        f"{'/'.join(str(len(splits[name])) for name in SPLIT_NAMES)} images; "
        f"{len(scan.excluded)} file(s) excluded (see {run_dir / 'data_report.json'})")

    views = {name: materialize_split(scan.root, splits[name], class_names, run_dir / "split_view" / name)
             for name in SPLIT_NAMES if splits[name]}
    image_size, batch_size = config.data.image_size, config.data.batch_size
    load = load_size(config.augment, image_size)
    if resume:
        normalization = read_json(run_dir / "normalization.json")
    else:
        normalization = normalization_for(config, entry, views["train"], class_names)
        write_json(run_dir / "normalization.json", normalization)

    augmenter = build_augmenter(config.augment, image_size, seed=config.train.seed)
    train_batches = EpochBatches(views["train"], class_names, image_size, batch_size, augmenter=augmenter,
                                 cache=config.data.cache, cache_path=run_dir / "cache" / "train",
                                 seed=config.train.seed, load_size=load)
    val_data = (make_dataset(views["val"], class_names, image_size, batch_size, cache=config.data.cache,
                             cache_path=run_dir / "cache" / "val") if "val" in views else None)

    steps_per_epoch = len(train_batches)
    with strategy.scope():  # variables are created once per replica
        model = build_model(config, len(class_names), normalization)
        model.compile(
            optimizer=make_optimizer(config.train, steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                     keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, len(class_names)), name="top5")])
    build_training_state(model, strategy, val_data if val_data is not None else train_batches(0))
    monitor = "val_accuracy" if val_data is not None else "accuracy"
    checkpoint = BestCheckpoint(run_dir / BEST_MODEL, monitor=monitor)
    checkpoint.set_model(model)
    nan_guard = StopOnNonFiniteLoss()
    initial_epoch, earlier_history = (restore_training(run_dir, model, checkpoint, log=log) if resume
                                      else (0, None))
    # Order matters at an epoch's end: history row, then training state, then best.keras (see resume.py).
    callbacks = [nan_guard, keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True)]
    if config.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False))
    callbacks += [SaveTrainingState(run_dir / STATE_FILE, checkpoint, nan_guard), checkpoint]
    log(f"training {config.model.name} ({model.count_params():,} parameters) for {config.train.epochs} "
        f"epochs on {strategy.num_replicas_in_sync} replica(s) "
        f"({', '.join(device.device_type for device in tf.config.list_logical_devices())}), "
        f"{config.train.precision}{', XLA' if config.train.jit_compile else ''}")
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    history = fit(model, strategy, train_batches, epochs=config.train.epochs, steps_per_epoch=steps_per_epoch,
                  initial_epoch=initial_epoch, validation_data=val_data, callbacks=callbacks, verbose=verbose,
                  jit_compile=config.train.jit_compile, earlier_history=earlier_history)
    plotting.plot_curves(run_dir / "history.csv", run_dir / "curves.png")
    if nan_guard.stopped_epoch is not None:
        last_good = (f"the last good checkpoint is {run_dir / BEST_MODEL} (epoch {checkpoint.best_epoch})"
                     if checkpoint.best_epoch else "no checkpoint was saved before it")
        raise UserError(f"training stopped: the loss became NaN or infinite in epoch {nan_guard.stopped_epoch}; "
                        f"{last_good}. Try a lower train.learning_rate")

    best_model = load_model_safely(run_dir / BEST_MODEL)
    test_data = make_dataset(views["test"], class_names, image_size, batch_size)
    metrics = evaluate_model(best_model, test_data, class_names)
    metrics.update(split="test", best_epoch=checkpoint.best_epoch, monitor=monitor,
                   best_monitor_value=checkpoint.best)
    write_json(run_dir / "metrics.json", metrics)
    return {"run_dir": str(run_dir), "top1": metrics["top1"], "top5": metrics["top5"],
            "mean_per_class_accuracy": metrics["mean_per_class_accuracy"], "num_test": metrics["num_examples"],
            "num_excluded": len(scan.excluded), "epochs_run": len(history.epoch),
            "best_epoch": checkpoint.best_epoch, "seconds": round(time.time() - started, 1)}
