"""Peak resident memory of a phase of a benchmark, on Linux.

``VmHWM`` of /proc/self/status is the process's peak resident set; writing 5 to
/proc/self/clear_refs resets it to the current one (Linux 4.0+), so a phase's own peak is
read at its end. Where the reset is refused, a thread samples ``VmRSS`` every 50 ms
instead (a peak shorter than that can be missed). Neither exists off Linux: the values
are then None.
"""

import pathlib
import re
import threading
import time


def _status_bytes(field):
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", pathlib.Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


class PeakMemory:
    """``with PeakMemory() as memory:`` records ``memory.start`` and ``memory.peak`` (bytes)."""

    def __enter__(self):
        self.start = _status_bytes("VmRSS")
        try:
            pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)
            self._sampler = None
        except OSError:
            self._sampled, self._stop = self.start or 0, threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self._sampled = max(self._sampled, _status_bytes("VmRSS") or 0)

    def __exit__(self, *exception):
        if self._sampler is None:
            self.peak = _status_bytes("VmHWM")
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = self._sampled or None


def timed(function, *args, **kwargs):
    """(result, seconds, PeakMemory) of one call."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        seconds = time.perf_counter() - started
    return result, seconds, memory
