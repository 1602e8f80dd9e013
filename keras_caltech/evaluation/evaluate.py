"""Evaluating a run: its best model on its saved test split, through the training pipeline.

:func:`evaluate_run` is the one evaluation every caller shares: the trainer at the end of
training and ``python -m keras_caltech evaluate``. It writes into the run folder
``metrics.json`` (plain evaluation at the top level, every TTA mode under ``"tta"``),
``confusion_matrix.png``, ``per_class.png`` and ``report.html``.
"""

import dataclasses
import pathlib

import numpy as np

from keras_caltech.data.splits import held_out_name
from keras_caltech.errors import UserError
from keras_caltech.evaluation import report
from keras_caltech.evaluation.metrics import classification_metrics
from keras_caltech.evaluation.tta import predict_with_tta
from keras_caltech.models.loading import load_model_safely
from keras_caltech.runs import open_run, read_json, write_json


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One model's (or ensemble's) answers on a split, row i belonging to ``files[i]``.

    Attributes:
        logits: float32 (n, classes), averaged over the TTA views (summed over ensemble members).
        labels: int64 (n,) true class indices.
        files: the images' paths (pathlib.Path), in row order.
    """

    logits: np.ndarray
    labels: np.ndarray
    files: list


def predict_run(run, model, files, mode, batch_size=None, progress=True):
    """Returns the :class:`Predictions` of a run's ``model`` on a split's files, with TTA ``mode``.

    Args:
        run: a RunFolder (its config gives the batch size and ``augment.resize_crop``).
        model: the run's loaded model; its own input size is used (a model without a
            fixed square input is refused with a UserError).
        files: (paths, labels) of the images, e.g. from ``RunFolder.split_files``.
        mode: a TTA mode.
        batch_size: views per forward pass; default the run's ``data.batch_size``.
        progress: draw a progress line on stderr (see ``tta.predict_with_tta``).
    """
    config = run.config
    paths, labels = files
    logits, labels, paths = predict_with_tta(model, paths, labels, mode, batch_size=batch_size or config.data.batch_size,
                                             resize_crop=config.augment.resize_crop, progress=progress)
    return Predictions(logits=logits, labels=labels, files=paths)


def modes_to_run(mode):
    """The plain evaluation always (cheap, and metrics.json's top level), then ``mode``."""
    return ("none",) if mode == "none" else ("none", mode)


def evaluate_run(run_dir, tta=None, *, split="test", batch_size=None, extra=None, data=None, log=print):
    """Evaluates a run's ``best.keras`` on its test split and writes the results into the run.

    The training or validation split instead (``split``) is evaluated into files of its
    own (:func:`evaluate_other_split`); ``metrics.json`` and ``report.html`` stay the test's.

    Args:
        run_dir: the run folder.
        tta: a TTA mode (see :mod:`keras_caltech.evaluation.tta`); default the run
            config's ``eval.tta``. The plain pass runs as well.
        batch_size: views per forward pass; default the run's ``data.batch_size``.
        extra: keys to add to ``metrics.json`` (the trainer's best epoch and monitor).
        data: the dataset folder, if it moved since training; default the one in splits.json.
        log: where progress lines go.

    Returns:
        The ``metrics.json`` dict: the plain evaluation's :func:`classification_metrics` at
        the top level (plus ``split`` and ``extra``), keys already in the file kept, and
        ``tta[mode]`` the full metrics of every mode evaluated so far.

    Raises:
        UserError: not an evaluable run folder (``best.keras`` missing or damaged), or test
            images missing or changed since the scan.
    """
    run = open_run(run_dir, data, need_model=True)
    mode = run.config.eval.tta if tta is None else tta
    if split != "test":
        return evaluate_other_split(run, split, mode, batch_size=batch_size, log=log)
    results, predictions = _predict_modes(run, "test", mode, batch_size, log)

    metrics = _existing_metrics(run.path / "metrics.json", log)
    metrics.update(results["none"], split="test", protocol=run.config.data.protocol,
                   reported_as=held_out_name(run.config.data.protocol), **(extra or {}))
    metrics["tta"] = {**metrics.get("tta", {}), **results}
    write_json(run.path / "metrics.json", metrics)
    report.write_figures(run.path, results[mode], run.class_names, mode)
    report.write_run_report(run, metrics, mode, predictions)
    return metrics


def _predict_modes(run, split, mode, batch_size, log):
    """The metrics of the plain pass and of ``mode`` on ``split``; returns (results by mode, last Predictions)."""
    model = load_model_safely(run.model_path)
    results, predictions = {}, None
    files = run.split_files(split, required=True)
    for current in modes_to_run(mode):
        log(f"evaluating {run.path.name} on {len(run.splits[split])} {split} images, TTA {current} ...")
        predictions = predict_run(run, model, files, current, batch_size)
        results[current] = classification_metrics(predictions.logits, predictions.labels, run.class_names)
    return results, predictions


def evaluate_other_split(run, split, mode, *, batch_size=None, log=print):
    """Evaluates a run's training or validation split: ``metrics_SPLIT.json``, ``confusion_matrix_SPLIT.png``.

    Returns:
        The dict written: the plain pass's :func:`classification_metrics`, ``split``, and
        ``tta[mode]`` of each mode evaluated.
    """
    results, _ = _predict_modes(run, split, mode, batch_size, log)
    metrics = {**results["none"], "split": split, "tta": results}
    write_json(run.path / f"metrics_{split}.json", metrics)
    report.write_figures(run.path, results[mode], run.class_names, mode, split=split)
    return metrics


def _existing_metrics(path, log):
    """The metrics.json already in a run (the trainer's keys, other TTA modes), or {}."""
    if not path.is_file():
        return {}
    try:
        existing = read_json(path)
    except UserError as error:
        log(f"warning: {error}; writing a new one")
        return {}
    return existing if isinstance(existing, dict) else {}
