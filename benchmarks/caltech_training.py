"""The training phases of the Caltech-scale rehearsal: each data.cache mode against the bare step.

The trainer's own training data (``recipes.make_fit_data``: ``EpochBatches`` with the
config's augmentation and ``data.cache``) feeds its loop (``training/loop.py``) with the
callbacks ``train.py`` runs every step (NaN guard, CSV history, TensorBoard, the
progress bar). Each contender trains a few dozen steps per round, the rounds taking
turns, and only the gaps between consecutive ``on_train_batch_end`` callbacks count:
steady state, not an epoch's start. The reference is the bare step: the same compiled
model on one real batch repeated from memory, no callback. A cache is filled by a whole
pass first (a row of its own), as it is from the second epoch of a run on.

Beside each rate: the process's CPU time per image, and the pipeline's alone, because on
a machine whose cores the step already keeps busy, the pipeline's CPU time is taken from
the step's: ``step / (step + pipeline)`` predicts the efficiency.
"""

import contextlib
import dataclasses
import io
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from caltech_phases import (EFFICIENCY_GOAL, GB, BatchClock, PhaseRow, Setup, batch_images, images_per_second,
                            log_line)
from keras_caltech.data.augment import load_size
from keras_caltech.data.pipeline import cached_shuffle_buffer, decoded_bytes
from keras_caltech.progress import track
from keras_caltech.training import loop, recipes
from keras_caltech.training.callbacks import StopOnNonFiniteLoss
from keras_caltech.training.memory import available_memory_bytes, training_memory_bytes
from peak_memory import PeakMemory, timed
from timing import interleaved

# A memory cache is timed only when the decoded images take at most this share of the
# memory available: the rest is the model's, TensorFlow's and other processes'.
MEMORY_CACHE_SHARE = 0.5


def cache_bytes(setup, split="train"):
    """Bytes a memory cache of ``split``'s decoded images takes (float32, at their decoding size)."""
    side = load_size(setup.config.augment, setup.config.data.image_size)
    return decoded_bytes(len(setup.files[split][0]), side)


def shuffle_buffer_bytes(setup):
    """Bytes of the decoded images a cached training split's shuffle buffer holds."""
    side = load_size(setup.config.augment, setup.config.data.image_size)
    return decoded_bytes(cached_shuffle_buffer(len(setup.files["train"][0]), side), side)


def cache_modes(setup):
    """The data.cache modes to time, and the reason a memory cache is not (or "")."""
    needed = cache_bytes(setup, "train") + (cache_bytes(setup, "val") if "val" in setup.files else 0)
    available = available_memory_bytes()
    if available is not None and needed > MEMORY_CACHE_SHARE * available:
        return ("none", "disk"), (f"the decoded training and validation images take {needed / GB:.1f} GB, "
                                  f"more than {MEMORY_CACHE_SHARE:.0%} of the {available / GB:.1f} GB available")
    return ("none", "disk", "memory"), ""


def fit_data(setup, cache):
    """(training batches, validation data) of ``setup`` under ``data.cache=cache``, as the trainer makes them."""
    config = dataclasses.replace(setup.config, data=dataclasses.replace(setup.config.data, cache=cache))
    class_weight = recipes.class_weights(setup.files["train"][1], len(setup.class_names),
                                         config.train.class_weight)
    cache_dir = setup.work_dir / "data_cache" / cache
    shutil.rmtree(cache_dir, ignore_errors=True)
    return recipes.make_fit_data(config, setup.files, setup.class_names, cache_dir, config.data.image_size,
                                 class_weight)


def fill_row(setup, batches, cache, progress=True):
    """Row of a cache's first pass: the whole training split decoded by the pipeline alone and cached."""
    images = len(setup.files["train"][0])

    def one_pass():
        for _ in track(batches(0), f"{setup.title}: filling the {cache} cache", images, size=batch_images,
                       enabled=progress):
            pass

    _, seconds, memory = timed(one_pass)
    on_disk = sum(path.stat().st_size for path in (setup.work_dir / "data_cache" / cache).rglob("*") if path.is_file())
    stored = f"{on_disk / GB:.1f} GB of cache files" if cache == "disk" else f"{cache_bytes(setup) / GB:.1f} GB held"
    return PhaseRow("cache", f"{setup.title}: data.cache={cache}, first pass (training split)", images / seconds,
                    "img/s", note=f"{seconds:.0f} s for {images:,} images, pipeline alone; {stored}",
                    peak_bytes=memory.peak, start_bytes=memory.start,
                    expected=(f"+{cache_bytes(setup) / GB:.1f} GB (the cache)" if cache == "memory" else
                              f"+{shuffle_buffer_bytes(setup) / GB:.1f} GB (the shuffle buffer)"))


@dataclasses.dataclass
class Contender:
    """One way of feeding the loop; ``run(steps)`` trains ``steps`` timed steps and returns their gaps."""

    epoch_batches: object
    callbacks: list
    verbose: int
    setup: Setup
    cpu_seconds: float = 0.0
    images: int = 0
    peak_bytes: float = 0
    start_bytes: float = 0
    epoch: int = 0  # epoch 0 filled the caches; each round is a new epoch, in a new order

    def reset(self):
        """Forgets what the warm-up counted."""
        self.cpu_seconds, self.images, self.peak_bytes, self.start_bytes = 0.0, 0, 0, 0

    def run(self, steps):
        clock = BatchClock(steps + 1)  # the first gap would include the epoch's start: one step more
        self.epoch += 1
        with PeakMemory() as memory, contextlib.redirect_stdout(io.StringIO()):  # the progress bar, unseen
            loop.fit(self.setup.model, self.setup.strategy, self.epoch_batches, epochs=self.epoch + 1,
                     initial_epoch=self.epoch, steps_per_epoch=steps + 1, callbacks=[*self.callbacks, clock],
                     verbose=self.verbose)
        if (memory.peak or 0) > self.peak_bytes:
            self.peak_bytes, self.start_bytes = memory.peak, memory.start
        self.cpu_seconds += clock.cpu_times[-1] - clock.cpu_times[0]
        self.images += steps * self.setup.config.data.batch_size
        return list(np.diff(clock.train_times))


def train_py_callbacks(setup):
    """The callbacks train.py runs at every step: NaN guard, CSV history, TensorBoard (the progress bar is fit's)."""
    folder = setup.work_dir / "run"
    callbacks = [StopOnNonFiniteLoss(), keras.callbacks.CSVLogger(str(folder / "history.csv"), append=True)]
    if setup.config.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(folder / "logs"), write_graph=False))
    folder.mkdir(parents=True, exist_ok=True)
    return callbacks


def pipeline_alone(batches, num_batches, epoch=1):
    """(images/s, CPU seconds per image) of ``num_batches`` training batches with no training step."""
    iterator = iter(batches(epoch).take(num_batches + 1))
    next(iterator)  # the epoch's start (a shuffle buffer's filling) is not steady state
    images, started, cpu = 0, time.perf_counter(), time.process_time()
    for batch in iterator:
        images += batch_images(batch)
    return images / (time.perf_counter() - started), (time.process_time() - cpu) / max(images, 1)


def _train_row(setup, cache, rate, bare_rate, contender, bare, alone):
    """The row of the whole loop under ``data.cache=cache`` against the bare step."""
    batch_size = setup.config.data.batch_size
    step_cpu, loop_cpu = (1000 * item.cpu_seconds / max(item.images, 1) for item in (bare, contender))
    alone_rate, alone_cpu = alone[0], 1000 * alone[1]
    # The step keeps both cores busy, so the pipeline's CPU time comes out of the step's.
    predicted = step_cpu / (step_cpu + alone_cpu)
    extra = {"none": 0, "disk": shuffle_buffer_bytes(setup), "memory": 0}[cache]
    estimate = training_memory_bytes(setup.model, batch_size)
    expected = (f"+{(estimate + extra) / GB:.1f} GB: the step (training/memory.py's estimate)"
                + (" + the shuffle buffer" if extra else "")
                + ("; the cache itself is held since its first pass" if cache == "memory" else ""))
    return PhaseRow(
        "train", f"{setup.title}, batch {batch_size}: whole loop, data.cache={cache}", rate, "img/s",
        "bare step", bare_rate, goal=EFFICIENCY_GOAL,
        note=(f"CPU {loop_cpu:.1f} ms/img (bare step {step_cpu:.1f}); pipeline alone {alone_rate:,.0f} img/s at "
              f"{alone_cpu:.1f} CPU ms/img, so sharing the cores predicts {predicted:.2f}"),
        peak_bytes=contender.peak_bytes, start_bytes=contender.start_bytes, expected=expected)


def training_rows(setup, steps, rounds, progress=True):
    """Rows of each cache's first pass, the bare step, and the whole loop under each cache mode.

    Returns:
        (rows, {cache mode: (training batches, validation data)}).
    """
    modes, memory_reason = cache_modes(setup)
    data, rows = {}, []
    for cache in modes:
        data[cache] = fit_data(setup, cache)
        if cache != "none":
            rows.append(fill_row(setup, data[cache][0], cache, progress))
    one_batch = next(iter(data["none"][0](0)))  # decoded once: the pipeline's own dtypes and shapes
    repeated = tf.data.Dataset.from_tensors(one_batch).repeat()
    contenders = {"bare": Contender(lambda epoch: repeated, [], 0, setup)}
    contenders.update({cache: Contender(data[cache][0], train_py_callbacks(setup), 1, setup) for cache in modes})
    for contender in contenders.values():
        contender.run(2)  # warm-up: tracing, thread pools, first allocations
        contender.reset()
    # A round stays inside one epoch's full batches (one more than timed: the first gap holds
    # the epoch's start; a last, smaller batch would be traced again inside a gap).
    full_batches = len(setup.files["train"][0]) // setup.config.data.batch_size
    per_round = max(1, min(steps // rounds, full_batches - 1))

    def announced(name, contender):
        def run():
            log_line(f"{setup.title}: {per_round} steps, {name}")
            return contender.run(per_round)
        return run

    seconds = interleaved({name: announced(name, item) for name, item in contenders.items()}, rounds, warmup=0)
    batch_size = setup.config.data.batch_size
    rate = {name: images_per_second(setup, gaps) for name, gaps in seconds.items()}
    bare = contenders["bare"]
    rows.append(PhaseRow(
        "train", f"{setup.title}, batch {batch_size}: bare step (one batch from memory, no callback)",
        rate["bare"], "img/s", note=f"{len(seconds['bare'])} steps in {rounds} rounds, taking turns with the loop",
        peak_bytes=bare.peak_bytes, start_bytes=bare.start_bytes,
        expected=f"+{training_memory_bytes(setup.model, batch_size) / GB:.1f} GB (training/memory.py's estimate)"))
    for cache in modes:
        alone = pipeline_alone(data[cache][0], per_round)
        rows.append(_train_row(setup, cache, rate[cache], rate["bare"], contenders[cache], bare, alone))
    if memory_reason:
        rows.append(PhaseRow("train", f"{setup.title}: whole loop, data.cache=memory",
                             note=f"skipped: does not fit: {memory_reason}"))
    return rows, data
