"""What ``python train.py`` does: train, evaluate the best model, export it for serving.

Training (training/trainer.py) knows nothing of evaluation or export; this module, one
layer above all three, chains them, so each stays usable alone
(``python -m keras_caltech evaluate`` / ``export`` redo the last two for a finished run).
"""

import pathlib
import time

from keras_caltech.config import load_config
from keras_caltech.errors import UserError
from keras_caltech.evaluation.evaluate import evaluate_run
from keras_caltech.export.saved_model import export_model
from keras_caltech.models.loading import load_model_safely
from keras_caltech.training import trainer
from keras_caltech.training.lock import holds_run_folder
from keras_caltech.runs import BEST_MODEL, read_json, write_json

# Records the SavedModel a run exported, so that resuming a finished run (which
# re-evaluates it) does not add an identical version for TF Serving to load.
EXPORT_RECORD = "export.json"


@holds_run_folder  # the run folder stays locked through evaluation and export
def train_evaluate_export(config, output_dir=None, *, resume=False, moved_data=None, log=print):
    """Trains ``config``, evaluates its best model on the test split, and exports it.

    Args:
        config: a resolved Config.
        output_dir: the run folder; default ``runs/<name>-<timestamp>``.
        resume: continue the run in ``output_dir`` (see ``trainer.train``).
        moved_data: with ``resume``, the dataset's new folder if it moved since the run started.
        log: where progress lines go.

    Returns:
        A summary dict: run_dir, export_dir (None when config.export.enabled is false,
        and on every worker but the chief), top1, top5, mean_per_class_accuracy,
        num_test, num_excluded, epochs_run, best_epoch, seconds, tta, tta_metrics, and
        reported_as ("test", or "validation" under the train_val protocol).

    Raises:
        UserError: see ``trainer.train``; a failed export names the command that retries it.
        TrainingInterrupted: Ctrl-C once the run folder exists (the run can be resumed:
            a resume of a fully trained run only evaluates and exports).
    """
    started = time.time()
    trained = trainer.train(config, output_dir, resume=resume, moved_data=moved_data, log=log)
    run_dir = trained["run_dir"]
    metrics = evaluate_run(run_dir, config.eval.tta, log=log, extra={
        "best_epoch": trained["best_epoch"], "monitor": trained["monitor"],
        "best_monitor_value": trained["best_monitor_value"]})
    export_dir = None
    # The best model, for TF Serving: BASE_DIR/NAME/VERSION/. In a multi-worker run only
    # the chief exports: the workers' models are the same, and they share BASE_DIR.
    if config.export.enabled and trained["chief"]:
        export_dir = _export_once(config, run_dir, trained["class_names"], log)
    return {"run_dir": str(run_dir), "top1": metrics["top1"], "top5": metrics["top5"],
            "mean_per_class_accuracy": metrics["mean_per_class_accuracy"], "num_test": metrics["num_examples"],
            "num_excluded": trained["num_excluded"], "epochs_run": trained["epochs_run"],
            "best_epoch": trained["best_epoch"], "seconds": round(time.time() - started, 1),
            "export_dir": None if export_dir is None else str(export_dir),
            "tta": config.eval.tta, "tta_metrics": metrics["tta"][config.eval.tta],
            "reported_as": metrics["reported_as"]}


def is_finished(run_dir):
    """Whether a run folder holds a finished run: trained, evaluated, and exported if its config asks."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    return (run_dir / EXPORT_RECORD).is_file() or not load_config(run_dir / "config.yaml").export.enabled


def _export_once(config, run_dir, class_names, log):
    """Exports the run's best model unless this run already did; returns the version folder."""
    record = run_dir / EXPORT_RECORD
    if record.is_file():
        previous = pathlib.Path(read_json(record)["export_dir"])
        if previous.is_dir():
            log(f"the best model was already exported to {previous}; not exporting it again")
            return previous
    try:
        export_dir = export_model(load_model_safely(run_dir / BEST_MODEL), class_names,
                                  config.export.base_dir, config.export.name or run_dir.resolve().name,
                                  resize_crop=config.augment.resize_crop)
    except UserError as error:
        raise UserError(f"training finished (run folder {run_dir}) but the export failed: {error}. "
                        f"Retry with: python -m keras_caltech export {run_dir} "
                        f"--base-dir {config.export.base_dir}") from error
    write_json(record, {"export_dir": str(export_dir.resolve())})
    return export_dir
