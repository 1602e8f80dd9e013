"""The measured phases of the Caltech-scale rehearsal (benchmarks/caltech_scale.py), training aside.

Every phase calls the project's own functions as ``train.py`` does: the scan
(``data/scan.py``), the split (``data/splits.py``), the trainer's dataset statistics
and compiled model (``PhaseRunner``), the loop's validation pass (``training/loop.py``),
test evaluation (``evaluation/tta.py``'s pipeline and forward pass) and the export
(``export/saved_model.py``). Training is benchmarks/caltech_training.py.

Each row holds the phase's peak resident memory (benchmarks/peak_memory.py) beside
what the phase should cost. Rates compared with a bare reference (the same compiled
step or forward pass on tensors already in memory, in the same process) give the
phase's efficiency.
"""

import dataclasses
import pathlib
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.config import load_config
from keras_caltech.data.pipeline import split_files
from keras_caltech.data.scan import scan_dataset
from keras_caltech.data.splits import stratified_split
from keras_caltech.evaluation.tta import TTA_VIEWS, images_per_batch, tta_dataset, tta_forward
from keras_caltech.export.saved_model import export_model
from keras_caltech.models import get_model_entry
from keras_caltech.progress import track
from keras_caltech.training import loop, phases
from keras_caltech.training.distribute import make_strategy
from keras_caltech.training.trainer import build_model, normalization_for
from peak_memory import PeakMemory, timed
from timing import Row, interleaved

GB = 1e9
EFFICIENCY_GOAL = 0.9
MODEL_TITLES = {"mycnn": "MyCNN", "resnet18": "ResNet-18"}


@dataclasses.dataclass
class PhaseRow(Row):
    """A row of the rehearsal's table: a :class:`timing.Row` with the phase's memory.

    Attributes:
        peak_bytes: peak resident memory during the phase.
        start_bytes: resident memory when it started.
        expected: what the phase should cost in memory, in words.
    """

    peak_bytes: float | None = None
    start_bytes: float | None = None
    expected: str = ""


def batch_images(batch):
    """The images in a batch of (images, labels, ...)."""
    return int(batch[0].shape[0])


def images_per_second(setup, gaps):
    """Images/s of full batches from the gaps between their ends (None without a gap)."""
    return setup.config.data.batch_size * len(gaps) / sum(gaps) if gaps else None


def log_line(text):
    """A timestamped line on stderr: where a long run has got to."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class BatchClock(keras.callbacks.Callback):
    """Records wall and CPU time at every batch's end; stops training after ``steps`` batches."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_begin(self, logs=None):
        self.train_times, self.cpu_times, self.test_times = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.train_times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())  # every thread of the process: step and pipeline
        if len(self.train_times) >= self.steps:
            self.model.stop_training = True

    def on_test_batch_end(self, batch, logs=None):
        self.test_times.append(time.perf_counter())


def scan_rows(tree, work_dir, workers=0):
    """Rows for the first scan (every file decoded) and the re-scan from its cache; returns (rows, scan)."""
    cache_dir = pathlib.Path(work_dir) / "scan_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    rows = []
    for name, note in (("first scan (decodes every file)", "a cold scan cache; the files were in the page cache"),
                       ("re-scan, cached", "only sizes and modification times are read")):
        scan, seconds, memory = timed(scan_dataset, tree, cache_dir=cache_dir, workers=workers)
        candidates = len(scan.files) + sum(reason != "not an image file (extension)" for _, reason in scan.excluded)
        excluded = ", ".join(f"{path} ({reason.split(':')[0].split(' (')[0]})" for path, reason in scan.excluded)
        rows.append(PhaseRow("scan", f"{name}, {len(scan.class_names)} classes", candidates / seconds, "img/s",
                             note=f"{seconds:.1f} s for {candidates:,} files; {note}; excluded: {excluded}",
                             peak_bytes=memory.peak, start_bytes=memory.start,
                             expected="file lists, and one decoded image per thread"))
    return rows, scan


@dataclasses.dataclass
class Setup:
    """What a model's measurements share: its config, data, compiled model and scratch folder."""

    title: str
    config: object
    class_names: list
    files: dict
    model: object
    strategy: object
    work_dir: pathlib.Path


def prepare(model_name, image_size, config_path, tree, work_dir, overrides=()):
    """Scans (cached), splits and builds the compiled model as the trainer does; returns (Setup, rows)."""
    config = load_config(config_path, [f"data.image_size={image_size}", f"data.root={tree}", *overrides])
    keras.utils.set_random_seed(config.train.seed)
    strategy = make_strategy(config.train.strategy)
    data = config.data
    scan = scan_dataset(tree, include=data.include_classes, exclude=data.exclude_classes,
                        cache_dir=pathlib.Path(work_dir) / "scan_cache")
    splits, seconds, memory = timed(
        stratified_split, scan.files, scan.class_names, test_fraction=data.test_fraction,
        val_fraction=data.val_fraction, train_per_class=data.train_per_class, test_per_class=data.test_per_class,
        seed=data.split_seed, protocol=data.protocol)
    title = f"{MODEL_TITLES.get(model_name, model_name)} {image_size} px"
    sizes = "/".join(str(len(splits[name])) for name in ("train", "val", "test"))
    rows = [PhaseRow("split", f"{title}: stratified split ({data.protocol})", len(scan.files) / seconds, "img/s",
                     note=f"{seconds * 1000:.0f} ms; train/val/test {sizes} images, {len(scan.class_names)} classes",
                     peak_bytes=memory.peak, start_bytes=memory.start, expected="the file lists")]
    files = {name: split_files(scan.root, splits[name]) for name in ("train", "val", "test") if splits[name]}
    entry = get_model_entry(config.model.name)
    normalization, seconds, memory = timed(normalization_for, config, entry, files["train"], scan.class_names)
    if normalization["mode"] == "dataset":
        rows.append(PhaseRow("statistics", f"{title}: dataset mean/std (sample of the training split)",
                             2000 / seconds, "img/s", note=f"{seconds:.1f} s", peak_bytes=memory.peak,
                             start_bytes=memory.start, expected="a few batches"))
    steps_per_epoch = -(-len(splits["train"]) // data.batch_size)
    runner = phases.PhaseRunner(config, lambda phase_config, weights: build_model(
        phase_config, len(scan.class_names), normalization, weights), len(scan.class_names), steps_per_epoch,
        log=lambda line: None)
    with strategy.scope():
        model = runner.enter(runner.plan[0])
    return Setup(title, config, scan.class_names, files, model, strategy, pathlib.Path(work_dir)), rows


def validation_row(setup, train_batches, val_data, num_batches):
    """Row of the loop's validation pass (its test step, data.cache=none) against the same step on one batch.

    Each timed pass follows one training step, as validation follows an epoch in ``fit``.
    """
    one_batch = next(iter(val_data))
    num_batches += 1  # the first gap holds the pass's start
    repeated = tf.data.Dataset.from_tensors(one_batch).repeat(num_batches)
    train_batch = tf.data.Dataset.from_tensors(next(iter(train_batches(0))))

    def run(validation):
        clock = BatchClock(1)  # one training step per call, then the validation pass
        loop.fit(setup.model, setup.strategy, lambda epoch: train_batch, epochs=1, steps_per_epoch=1,
                 validation_data=validation, callbacks=[clock], verbose=0)
        return list(np.diff(clock.test_times))

    with PeakMemory() as memory:
        seconds = interleaved({"bare": lambda: run(repeated), "loop": lambda: run(val_data.take(num_batches))},
                              repeats=2, warmup=1)
    rate = {name: images_per_second(setup, gaps) for name, gaps in seconds.items()}
    return PhaseRow("evaluate", f"{setup.title}: validation pass (loop's test step), data.cache=none",
                    rate["loop"], "img/s", "test step on one batch from memory", rate["bare"], goal=EFFICIENCY_GOAL,
                    note=f"{len(seconds['loop'])} batches of {setup.config.data.batch_size}", peak_bytes=memory.peak,
                    start_bytes=memory.start, expected="a few batches")


def evaluation_row(setup, mode, num_images, progress=True):
    """Row of test evaluation with TTA ``mode`` (tta.py's pipeline and forward pass) against its bare pass."""
    paths, labels = setup.files["test"]
    chosen = np.unique(np.linspace(0, len(paths) - 1, min(num_images, len(paths))).round().astype(int))
    size, crop = setup.config.data.image_size, setup.config.augment.resize_crop
    per_batch = images_per_batch(setup.config.data.batch_size, mode)
    forward = tta_forward(setup.model, mode, size)
    dataset = tta_dataset([paths[index] for index in chosen], labels[chosen], size, mode, per_batch, crop)
    with PeakMemory() as memory:
        times = []
        for views, _ in track(dataset, f"{setup.title}: evaluating, TTA {mode}", len(chosen),
                              size=lambda batch: int(batch[1].shape[0]), enabled=progress):
            forward(views).numpy()
            times.append((time.perf_counter(), int(views.shape[0]) // TTA_VIEWS[mode]))
    images = sum(count for _, count in times[1:])  # the first batch holds the trace
    rate = images / (times[-1][0] - times[0][0]) if images else None
    views = tf.random.uniform((per_batch * TTA_VIEWS[mode], size, size, 3), 0, 255)
    forward(views).numpy()
    started = time.perf_counter()
    for _ in range(10):
        forward(views).numpy()
    bare_rate = 10 * per_batch / (time.perf_counter() - started)
    return PhaseRow("evaluate", f"{setup.title}: test evaluation, TTA {mode} ({TTA_VIEWS[mode]} view(s))", rate,
                    "img/s", "forward pass on views from memory", bare_rate, goal=EFFICIENCY_GOAL,
                    note=f"{len(chosen):,} of {len(paths):,} test images, {per_batch} per batch",
                    peak_bytes=memory.peak, start_bytes=memory.start, expected="a few batches and the logits")


def export_row(setup):
    """Row of exporting the model as the run's SavedModel (export/saved_model.py)."""
    base_dir = setup.work_dir / "saved_models"
    shutil.rmtree(base_dir, ignore_errors=True)
    path, seconds, memory = timed(export_model, setup.model, setup.class_names, base_dir,
                                  setup.config.model.name, resize_crop=setup.config.augment.resize_crop)
    on_disk = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return PhaseRow("export", f"{setup.title}: SavedModel export", seconds, "s", note=f"{on_disk / 1e6:.0f} MB",
                    peak_bytes=memory.peak, start_bytes=memory.start, expected="a traced copy of the model")
