"""Timing helpers shared by every benchmark section: interleaved repetitions and medians.

The machine this project runs on is often shared, so every comparison is measured in the
same run, after warm-up, as the median of several repetitions, and the contenders take
turns one repetition at a time: load from other processes then slows each contender
alike instead of whichever happened to run during a busy minute.
"""

import dataclasses
import statistics
import time


@dataclasses.dataclass
class Row:
    """One line of the results table.

    Attributes:
        section: the table section ("training", "flops", "pipeline", "gradcam", "serving").
        name: what was measured, e.g. "ResNet-18 224 px fp32: ours (train.py's step)".
        value: the measurement (None when skipped).
        unit: e.g. "img/s", "GFLOP/s", "heatmaps/s".
        reference: what it is compared with, e.g. "PyTorch 2.13 eager, channels-last".
        reference_value: the reference's measurement in the same unit (None: no comparison).
        goal: the minimum ratio value / reference_value aimed at (None: no goal).
        note: anything a reader needs: why a row is skipped, what a ratio means.
    """

    section: str
    name: str
    value: float | None = None
    unit: str = ""
    reference: str = ""
    reference_value: float | None = None
    goal: float | None = None
    note: str = ""

    @property
    def ratio(self):
        if self.value is None or not self.reference_value:
            return None
        return self.value / self.reference_value

    @property
    def status(self):
        """"met", "missed", "skipped" or "" (no goal)."""
        if self.value is None:
            return "skipped"
        if self.goal is None or self.ratio is None:
            return ""
        return "met" if self.ratio >= self.goal else "missed"

    def to_dict(self):
        return {**dataclasses.asdict(self), "ratio": self.ratio, "status": self.status}


def skipped(section, name, reason, goal=None):
    """A row for a measurement that could not be made here, saying why."""
    return Row(section, name, goal=goal, note=f"skipped: {reason}")


def interleaved(contenders, repeats, warmup=1):
    """Runs each contender ``warmup`` times, then ``repeats`` rounds in turn.

    Args:
        contenders: dict name -> callable taking no argument. A callable returns the
            seconds that count (a float or a list of floats, e.g. per-step times it
            measured itself), or None to have the whole call timed here.
        repeats: timed rounds.
        warmup: untimed rounds first (tracing, allocation, caches, thread pools).

    Returns:
        dict name -> list of seconds, every timed sample of every round.
    """
    for _ in range(warmup):
        for function in contenders.values():
            function()
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, function in contenders.items():
            started = time.perf_counter()
            measured = function()
            elapsed = time.perf_counter() - started
            if measured is None:
                samples[name].append(elapsed)
            elif isinstance(measured, (list, tuple)):
                samples[name].extend(float(value) for value in measured)
            elif isinstance(measured, float):
                samples[name].append(measured)
            else:
                raise TypeError(f"contender {name!r} returned {type(measured).__name__}; "
                                "return None (time the call) or its own seconds")
    return samples


def rate(items, seconds):
    """Items per second from the median of several timings of ``items`` items each."""
    return items / statistics.median(seconds)
