"""Callbacks of our own, where Keras has none that does the job."""

import math
import pathlib

import keras

from keras_caltech.progress import ProgressLine
from keras_caltech.runs import replaced_atomically


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite batch loss and remembers where.

    Keras' TerminateOnNaN stops too, but says only "Batch N: Invalid loss"; the trainer
    reads ``stopped_epoch`` to tell the user which epoch failed and which checkpoint is
    the last good one.
    """

    def __init__(self):
        super().__init__()
        self.stopped_epoch = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.stopped_epoch = self._epoch + 1  # 1-based, as printed by fit
            self.model.stop_training = True


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever the monitored metric improves, atomically.

    Keras' ModelCheckpoint writes the ``.keras`` zip in place, so a run killed during a
    save leaves a damaged "best" model behind. This one saves to a temporary file and
    renames it over the checkpoint, which is atomic on POSIX file systems.

    In the trainer it runs after ``SaveTrainingState`` (see resume.py), which records the
    improvement first: a run killed between the two is repaired on resume.

    Attributes:
        best: the best value seen so far (None before the first epoch).
        best_epoch: 1-based epoch of ``best``.
    """

    def __init__(self, path, monitor="val_accuracy"):
        super().__init__()
        self.path = pathlib.Path(path)
        self.monitor = monitor
        self.best = None
        self.best_epoch = None

    def improved_value(self, logs):
        """The monitored value of ``logs`` if it beats ``best`` (and is finite), else None.

        An epoch whose training loss is not finite never counts: its weights are NaN,
        even when the validation accuracy of their (arbitrary) predictions is a number.
        """
        logs = logs or {}
        value, loss = logs.get(self.monitor), logs.get("loss")
        if value is None or not math.isfinite(float(value)) or (loss is not None and not math.isfinite(float(loss))):
            return None
        return float(value) if self.best is None or float(value) > self.best else None

    def on_epoch_end(self, epoch, logs=None):
        value = self.improved_value(logs)
        if value is not None:
            self.best, self.best_epoch = value, epoch + 1
            self.save()

    def save(self):
        """Writes the model to ``path`` through a temporary file."""
        with replaced_atomically(self.path) as temporary:
            self.model.save(temporary)


class EpochProgressLines(keras.callbacks.Callback):
    """A line every 10 seconds inside each epoch, for logs: ``verbose=2`` prints only at an epoch's end.

    At Caltech-256's size an epoch takes minutes (the first, filling a disk cache, the
    longest), long enough for a log to look stalled.

    Args:
        steps_per_epoch: batches per epoch.
        stream: where the lines go (default stderr).
    """

    def __init__(self, steps_per_epoch, stream=None):
        super().__init__()
        self.steps_per_epoch, self.stream = steps_per_epoch, stream
        self.line = None

    def on_epoch_begin(self, epoch, logs=None):
        self.line = ProgressLine(f"epoch {epoch + 1}", self.steps_per_epoch, unit="batches", stream=self.stream)

    def on_train_batch_end(self, batch, logs=None):
        self.line.update(batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self.line.enabled = False  # Keras' own epoch line follows
