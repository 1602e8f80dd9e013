"""A chain of runs, each starting from the weights of the one before: progressive pretraining.

``python train.py --chain configs/progressive`` trains the folder's configs one after the
other, in file-name order (``1_...yaml``, ``2_...yaml``, ...), each into
``CHAIN_DIR/<config file name>/`` (default ``runs/<folder name>/``). Every stage after
the first starts from the previous stage's run (``model.init_from``), with a new head
when the class count differs. A stage trains on its config's ``data.root``, else on the
published dataset its ``data.dataset`` names, downloaded once.

A chain may take days, so the same command continues it after any stop: a finished
stage (evaluated, and exported if its config asks) is not redone, a stopped one is
resumed from its last completed epoch, and the stages after it start in turn.
"""

import pathlib

from keras_caltech.config import load_config
from keras_caltech.data.download import download_dataset
from keras_caltech.errors import TrainingInterrupted, UserError
from keras_caltech.training.dry_run import dry_run as describe_stage
from keras_caltech.training.resume import load_run_config
from keras_caltech.workflow import is_finished, train_evaluate_export


def chain_stages(folder):
    """Returns the stage configs of a chain folder, in the order they train.

    Raises:
        UserError: the folder is missing, or holds no ``.yaml`` config.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise UserError(f"--chain expects a folder of stage configs; not a folder: {folder}")
    stages = sorted(folder.glob("*.yaml"))
    if not stages:
        raise UserError(f"{folder} holds no .yaml stage config")
    return stages


def run_chain(folder, output_dir=None, *, overrides=(), download_dir="data", dry_run=False, log=print):
    """Trains, evaluates and exports every stage of a chain in turn, or continues a stopped chain.

    Args:
        folder: the chain folder of stage configs (see the module docstring).
        output_dir: where the stages' run folders go; default ``runs/<folder name>``.
        overrides: ``section.key=value`` items applied to every stage.
        download_dir: where published datasets are downloaded and extracted.
        dry_run: build and describe each stage's model only (no data, no weights).
        log: where progress lines go.

    Yields:
        The summary of each stage trained or continued now, as it finishes (finished
        stages are skipped), as ``train_evaluate_export`` returns it.

    Raises:
        UserError: see :func:`chain_stages`; a stage naming neither data nor a dataset,
            or setting its own ``model.init_from`` after the first stage.
        TrainingInterrupted: Ctrl-C; its command continues the chain.
    """
    stages = chain_stages(folder)
    for number, path in enumerate(stages):  # every stage's mistakes before days of training
        _check_stage(path, number, overrides, dry_run)
    output_dir = pathlib.Path(output_dir or pathlib.Path("runs") / pathlib.Path(folder).resolve().name)
    command = f"python train.py --chain {folder} --output-dir {output_dir}"
    previous = None
    for number, path in enumerate(stages, 1):
        run_dir = output_dir / path.stem
        label = f"stage {number} of {len(stages)} ({path.name})"
        try:
            summary = _run_stage(path, run_dir, previous, label, overrides, download_dir, dry_run, log)
        except TrainingInterrupted as stop:
            raise TrainingInterrupted(stop.run_dir, command) from None
        if summary is not None:
            yield summary
        previous = run_dir


def _run_stage(path, run_dir, previous, label, overrides, download_dir, dry_run, log):
    """Runs one stage: skipped when finished, resumed when stopped, else started; returns its summary."""
    if dry_run:
        log(f"{label}: dry run" + (f" (would start from {previous})" if previous else ""))
        describe_stage(_stage_config(path, None, overrides, download_dir, dry_run=True), log=log)
        return None
    if is_finished(run_dir):
        log(f"{label}: finished earlier in {run_dir}; not redone")
        return None
    if (run_dir / "config.yaml").is_file():
        log(f"{label}: continuing the stopped run {run_dir}")
        return train_evaluate_export(load_run_config(run_dir), run_dir, resume=True, log=log)
    log(f"{label}: starting {run_dir}" + (f" from {previous}" if previous else ""))
    return train_evaluate_export(_stage_config(path, previous, overrides, download_dir), run_dir, log=log)


def _check_stage(path, index, overrides, dry_run):
    """Raises UserError if a stage sets its own starting weights after the first, or names no data."""
    config = load_config(path, overrides)
    if index and config.model.init_from:
        raise UserError(f"{path} sets model.init_from, but a chain starts each stage after the first "
                        "from the previous stage; remove it")
    if not (config.data.root or config.data.dataset or dry_run):
        raise UserError(f"{path} names no data: set data.dataset (a published dataset, downloaded "
                        "once) or data.root (a folder-per-class tree)")


def _stage_config(path, previous, overrides, download_dir, *, dry_run=False):
    """Loads a stage's config with its data folder and, after the first stage, the previous run's weights."""
    config = load_config(path, overrides)
    extra = [] if previous is None else [f"model.init_from={previous.resolve()}"]
    if not (config.data.root or dry_run):
        extra.append(f"data.root={download_dataset(config.data.dataset, download_dir)}")
    return load_config(path, [*overrides, *extra]) if extra else config
