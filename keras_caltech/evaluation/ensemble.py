"""Ensembles: the sum of several runs' logits on the test split they share.

Each member keeps its own input size and its own preprocessing (inside its model), and
sees the same test images in the same order; the members' logits (after TTA averaging)
are summed. Runs are refused unless their class lists and test splits are identical,
since otherwise the sum would mix different questions.

An ensemble writes into its output folder ``metrics.json`` (the ensemble's metrics at the
top level, plus ``members`` and ``tta_mode``), ``confusion_matrix.png``, ``per_class.png`` and
``report.html``.
"""

import pathlib
import time

import numpy as np

from keras_caltech.errors import UserError
from keras_caltech.evaluation import report
from keras_caltech.evaluation.evaluate import Predictions, predict_run
from keras_caltech.evaluation.metrics import classification_metrics
from keras_caltech.models.loading import load_model_safely
from keras_caltech.runs import create_run_folder, open_run, write_json


def default_output_dir():
    """``runs/ensemble-<date>-<time>``: a new folder per ensemble."""
    return pathlib.Path("runs") / f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}"


def open_members(run_dirs, data=None):
    """Opens the member runs and checks they answer the same question on the same images.

    ``data``: the dataset folder of every member, if it moved since training.

    Raises:
        UserError: fewer than two runs, a run listed twice, a run without best.keras, or
            runs whose class lists, dataset folders or test splits differ.
    """
    if len(run_dirs) < 2:
        raise UserError(f"an ensemble needs at least 2 run folders. Received: {len(run_dirs)}")
    resolved = [pathlib.Path(run_dir).resolve() for run_dir in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise UserError("the same run folder is listed twice; an ensemble member counts once")
    runs = [open_run(run_dir, need_model=True) for run_dir in run_dirs]  # --data applies after the checks
    first = runs[0]
    for run in runs[1:]:
        if run.class_names != first.class_names:
            only_first = sorted(set(first.class_names) - set(run.class_names))
            only_this = sorted(set(run.class_names) - set(first.class_names))
            detail = (f"only in {first.path}: {', '.join(only_first[:5]) or '-'}; "
                      f"only in {run.path}: {', '.join(only_this[:5]) or '-'}" if only_first or only_this
                      else "same classes in a different order")
            raise UserError(f"runs {first.path} and {run.path} have different class lists ({detail}); "
                            "an ensemble sums logits class by class, so its members must share one class list")
        if run.root.resolve() != first.root.resolve():
            raise UserError(f"runs {first.path} and {run.path} were tested on different dataset folders "
                            f"({first.root} vs {run.root}); ensemble runs trained on the same dataset")
        if sorted(run.splits["test"]) != sorted(first.splits["test"]):
            differing = len(set(run.splits["test"]) ^ set(first.splits["test"]))
            raise UserError(f"runs {first.path} and {run.path} have different test splits ({differing} image(s) "
                            "in one but not the other); ensemble runs trained with the same data.split_seed, "
                            "data.test_fraction and data.train_per_class")
    return runs if data is None else [run.moved_to(data) for run in runs]


def ensemble_predictions(runs, mode, batch_size=None, log=print):
    """Each member's predictions and their sum on the shared test split.

    Args:
        runs: RunFolders checked by :func:`open_members`.
        mode: a TTA mode, applied to every member.
        batch_size: views per forward pass; default each run's ``data.batch_size``.
        log: where progress lines go.

    Returns:
        (ensemble Predictions with summed logits, list of each member's Predictions).
    """
    members = []
    files = runs[0].split_files("test", required=True)  # one file list serves every member: the same images in the same order
    for run in runs:
        log(f"predicting {run.path} ({run.config.model.name}, TTA {mode}) ...")
        members.append(predict_run(run, load_model_safely(run.model_path), files, mode, batch_size))
    for run, member in zip(runs[1:], members[1:]):
        if not np.array_equal(member.labels, members[0].labels):  # a pipeline bug, not a user error
            raise RuntimeError(f"{run.path} saw the test images in a different order than {runs[0].path}")
    logits = np.sum([member.logits for member in members], axis=0)  # (n, classes)
    return Predictions(logits=logits, labels=members[0].labels, files=members[0].files), members


def evaluate_ensemble(run_dirs, tta="none", output_dir=None, *, batch_size=None, data=None, log=print):
    """Evaluates the sum of several runs' logits and writes the results to ``output_dir``.

    Args:
        run_dirs: two or more run folders with identical class lists and test splits.
        tta: a TTA mode applied to every member.
        output_dir: a new (or empty) folder; default ``runs/ensemble-<date>-<time>``.
        batch_size: views per forward pass; default each run's ``data.batch_size``.
        data: the members' dataset folder, if it moved since training.
        log: where progress lines go.

    Returns:
        (the metrics dict written to ``metrics.json``, the ensemble's Predictions, the output folder).

    Raises:
        UserError: incompatible runs, or an output folder that holds files.
    """
    runs = open_members(run_dirs, data)
    output_dir = create_run_folder(output_dir or default_output_dir(), "--output")  # refuse a used folder before the work
    try:
        predictions, members = ensemble_predictions(runs, tta, batch_size, log)
    except BaseException:
        if not any(output_dir.iterdir()):
            output_dir.rmdir()  # leave no empty folder behind a failed ensemble
        raise
    class_names = runs[0].class_names
    metrics = classification_metrics(predictions.logits, predictions.labels, class_names)
    member_summaries = []
    for run, member in zip(runs, members):
        member_metrics = classification_metrics(member.logits, member.labels, class_names)
        member_summaries.append({
            "run": str(run.path), "model": run.config.model.name, "image_size": int(run.config.data.image_size),
            **{key: member_metrics[key] for key in ("top1", "top5", "mean_per_class_accuracy", "loss")}})
    metrics.update(split="test", tta_mode=tta, members=member_summaries)
    write_json(output_dir / "metrics.json", metrics)
    report.write_figures(output_dir, metrics, class_names, tta)
    report.write_ensemble_report(output_dir, member_summaries, metrics, tta, predictions, class_names, runs[0].root)
    return metrics, predictions, output_dir
