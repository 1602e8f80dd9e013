"""Runs ``train.main`` in a subprocess set up in a way a test cannot do in its own process.

    python tests/train_driver.py MODE MARKER_FILE -- TRAIN_ARGS...

MODE is one of:

- ``pause``: in epoch 2, after its first batch, write MARKER_FILE and sleep, so the test
  can send a real signal to a run that is mid-epoch (test_resume.py);
- ``kill-in-save``: in the second save of the training state, write half the file, write
  MARKER_FILE and SIGKILL this process, as a power cut would (test_resume.py);
- ``two-cpus``: split the CPU into two logical devices before TensorFlow starts, so
  MirroredStrategy has two replicas (test_distribute.py); MARKER_FILE is unused.

Faults are injected by patching, here, so the library carries no test hooks.
"""

import io
import os
import pathlib
import signal
import sys
import time

import numpy as np  # noqa: E402

import train  # noqa: E402
from keras_caltech.training import callbacks  # noqa: E402


def pause_in_epoch_2(marker):
    original = callbacks.StopOnNonFiniteLoss.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        original(self, batch, logs)
        if self._epoch == 1 and batch == 0:
            marker.write_text(str(os.getpid()))
            while True:
                time.sleep(0.1)

    callbacks.StopOnNonFiniteLoss.on_train_batch_end = on_train_batch_end


def kill_in_second_state_save(marker):
    original = np.savez
    calls = []

    def savez(handle, **arrays):
        calls.append(1)
        if len(calls) < 2:
            return original(handle, **arrays)
        buffer = io.BytesIO()
        original(buffer, **arrays)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

    np.savez = savez


def two_logical_cpus(marker):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


if __name__ == "__main__":
    mode, marker, separator, *train_args = sys.argv[1:]
    assert separator == "--"
    modes = {"pause": pause_in_epoch_2, "kill-in-save": kill_in_second_state_save, "two-cpus": two_logical_cpus}
    modes[mode](pathlib.Path(marker))
    sys.exit(train.main(train_args))
