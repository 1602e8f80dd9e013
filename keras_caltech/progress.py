"""A progress line for long loops: count, total, rate and time left, on a terminal or in a log.

At Caltech-256's size a scan decodes 30,607 images, a disk cache's first pass writes
gigabytes, 10-crop testing runs ten forward passes per image and the dataset's download
is 1.2 GB: minutes each, silent unless something says how far along they are.
:class:`ProgressLine` prints::

    scanning 256_ObjectCategories: 12,288/30,607 images (40%), 512 images/s, 0:35 left
    caltech256: 52.0/1,183.0 MB (4%), 5.2 MB/s, 3:38 left

On a terminal the line is redrawn in place twice a second; in a log (a stream that is
not a terminal) a new line is written every 10 seconds, so a log of a long scan holds a
few dozen lines, not thirty thousand, and a loop shorter than that writes none (unless
its caller asks for the final line). The rate is the average since the start, which is
steady enough for an ETA without smoothing.

Written here, not with ``tqdm``: one short class covers it, and the project has no
dependency on ``tqdm``. Keras' ``Progbar`` draws training epochs and stays there.
"""

import sys
import time

TERMINAL_INTERVAL_SECONDS = 0.5
LOG_INTERVAL_SECONDS = 10.0


def format_duration(seconds):
    """``seconds`` as ``M:SS`` or ``H:MM:SS`` (e.g. 75 -> "1:15", 3725 -> "1:02:05")."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_count(number):
    """``number`` whole, with thousands separators (e.g. 12288 -> "12,288", 511.6 -> "512")."""
    return f"{number:,.0f}"


class ProgressLine:
    """Prints the progress of a loop of ``total`` items on ``stream`` (default stderr).

    Args:
        label: what is being done, e.g. ``"scanning 256_ObjectCategories"``.
        total: items expected, or None when unknown (no percentage, no ETA).
        unit: the items' name in the line ("images", "batches", "MB").
        format_amount: ``format_amount(number) -> str``, how a count, the total and the
            rate read (e.g. bytes as megabytes, ``"1,183.0"``); default
            :func:`format_count`.
        start: items done before this run (a resumed download's kept bytes): counted
            in the count and percentage, left out of the rate and ETA, which measure
            this run only.
        always_print_final: print the final line in a log even when the loop was too
            short to print any line before it.
        enabled: False prints nothing (a quiet mode, tests).
        stream: where to write; a terminal gets a line redrawn in place.
        clock: seconds, monotonic (tests pass a fake one).

    Use ``update(count)`` with the count so far or ``advance(n)`` with the count of new
    items, then ``finish()``; or ``with ProgressLine(...) as progress:``, which finishes
    on leaving.
    """

    def __init__(self, label, total=None, *, unit="images", format_amount=format_count, start=0,
                 always_print_final=False, enabled=True, stream=None, clock=time.monotonic):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.format_amount, self.start, self.always_print_final = format_amount, start, always_print_final
        self.stream = stream or sys.stderr
        self.in_place = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_seconds = TERMINAL_INTERVAL_SECONDS if self.in_place else LOG_INTERVAL_SECONDS
        self.clock = clock
        self.count = start
        self.start_time = self.last_print_time = clock()
        self._last_width = 0
        self._printed = False

    def text(self, count=None):
        """The progress line for ``count`` items done (default: the count so far)."""
        count = self.count if count is None else count
        amount = self.format_amount
        elapsed = self.clock() - self.start_time
        rate = (count - self.start) / elapsed if elapsed > 0 else 0.0
        done = f"{amount(count)}/{amount(self.total)} {self.unit}" if self.total else f"{amount(count)} {self.unit}"
        if self.total:
            done += f" ({100 * count // self.total}%)"
        line = f"{self.label}: {done}, {amount(rate)} {self.unit}/s" if rate else f"{self.label}: {done}"
        if self.total and rate and count < self.total:
            line += f", {format_duration((self.total - count) / rate)} left"
        elif self.total and count >= self.total:
            line += f", took {format_duration(elapsed)}"
        return line

    def update(self, count):
        """Records ``count`` items done; prints the line if its interval has passed."""
        self.count = count
        now = self.clock()
        if self.enabled and now - self.last_print_time >= self.interval_seconds:
            self.last_print_time = now
            self._write(end="")

    def advance(self, amount=1):
        """Records ``amount`` more items done (see :meth:`update`)."""
        self.update(self.count + amount)

    def finish(self, count=None):
        """Prints the final line and ends it; in a log, only after earlier lines or if always_print_final."""
        if count is not None:
            self.count = count
        if self.enabled and (self.in_place or self._printed or self.always_print_final):
            self._write(end="\n")
        self.enabled = False  # a second finish (the with block's) prints nothing

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.finish()

    def _write(self, end):
        self._printed = True
        line = self.text()
        if self.in_place:
            # Pad over the previous line's tail, which a shorter line would leave visible.
            self.stream.write(f"\r{line.ljust(self._last_width)}{end}")
            self._last_width = len(line)
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()


def track(iterable, label, total=None, *, size=None, **options):
    """Yields the items of ``iterable`` while a :class:`ProgressLine` counts them.

    Args:
        iterable: anything iterable, e.g. a tf.data.Dataset of batches.
        label, total: as :class:`ProgressLine`; ``total`` defaults to ``len(iterable)``
            when it has one.
        size: ``size(item) -> int``, the items each one counts for (e.g. the images of
            a batch: ``lambda batch: len(batch[1])``); default 1.
        options: more :class:`ProgressLine` keyword arguments (unit, enabled, stream,
            clock, ...).

    The line is finished when the loop ends, is broken out of, or raises.
    """
    if total is None:
        try:
            total = len(iterable)
        except TypeError:  # no length, or a tf.data.Dataset of unknown length
            total = None
    with ProgressLine(label, total, **options) as progress:
        for item in iterable:
            yield item
            progress.advance(size(item) if size else 1)
