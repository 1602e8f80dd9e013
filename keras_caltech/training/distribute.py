"""Which tf.distribute strategy trains the model: one device, every GPU of a machine, or several machines.

    train.strategy   what trains
    one              TensorFlow's default strategy: one device (the GPU if there is one, else the CPU)
    mirrored         tf.distribute.MirroredStrategy: one replica per GPU of this machine
    multiworker      tf.distribute.MultiWorkerMirroredStrategy: every worker listed in TF_CONFIG
    auto             multiworker when TF_CONFIG lists 2+ workers, else mirrored with 2+ GPUs, else one

``data.batch_size`` is the global batch: each of N replicas takes 1/N of every batch and
the gradients are summed across replicas, so N replicas compute the update one device
would (MyCNN's BatchNorm is synchronized across replicas for the same reason).

A multi-worker run starts the same command on every machine, each with its own
TF_CONFIG. Worker 0 is the chief and writes the run folder; worker N writes the same
files to ``<run folder>-workerN`` (every worker saves, so no worker waits on another's
disk, and each can resume from its own folder).
"""

import json
import os
import pathlib

import tensorflow as tf

from keras_caltech.config import STRATEGIES
from keras_caltech.errors import UserError

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


def tf_config_workers():
    """Returns the worker addresses listed in the TF_CONFIG environment variable ([] if unset).

    Raises:
        UserError: TF_CONFIG is set but is not the JSON TensorFlow expects.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return []
    try:
        workers = json.loads(raw)["cluster"]["worker"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"TF_CONFIG is not valid: expected JSON like {TF_CONFIG_EXAMPLE}. Received: {raw!r}")
    if not isinstance(workers, list):
        raise UserError(f"TF_CONFIG cluster.worker must be a list of host:port. Received: {workers!r}")
    return workers


def tf_config_task_index():
    """The worker index TF_CONFIG gives this process (0 when TF_CONFIG is unset)."""
    try:
        return int(json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {}).get("index", 0))
    except (ValueError, TypeError, AttributeError):
        return 0  # make_strategy reports a malformed TF_CONFIG


def make_strategy(name):
    """Creates the tf.distribute strategy ``train.strategy`` names.

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy configures the
    runtime's collective ops, which TensorFlow allows only at start-up.

    Args:
        name: one of :data:`STRATEGIES`.

    Returns:
        A ``tf.distribute.Strategy``; models and optimizers must be created in its ``scope()``.

    Raises:
        UserError: unknown name, or multiworker without a usable TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise UserError(f"unknown train.strategy {name!r}. Valid strategies: {', '.join(STRATEGIES)}")
    workers = tf_config_workers()
    if name == "auto":
        if len(workers) > 1:
            name = "multiworker"
        else:
            name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every GPU; without one, every logical CPU device (normally one, but a CPU can be
        # split into several with tf.config.set_logical_device_configuration, as the tests do).
        devices = ([device.name for device in tf.config.list_logical_devices("GPU")]
                   or [device.name for device in tf.config.list_logical_devices("CPU")])
        return tf.distribute.MirroredStrategy(devices)
    if not workers:
        raise UserError("train.strategy=multiworker needs the TF_CONFIG environment variable listing "
                        f"every worker, set differently on each machine, e.g. {TF_CONFIG_EXAMPLE} "
                        "(index 1 on the second machine)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_index(strategy):
    """This process's worker index in a multi-worker run; 0 for every other strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0
    return int(resolver.task_id or 0)


def with_worker_suffix(run_dir, index):
    """``run_dir`` for worker 0 (the chief), ``run_dir-workerN`` for worker N (kept if already there)."""
    run_dir = pathlib.Path(run_dir)
    suffix = f"-worker{index}"
    if index == 0 or run_dir.name.endswith(suffix):
        return run_dir
    return run_dir.with_name(run_dir.name + suffix)


def worker_run_dir(run_dir, strategy):
    """The run folder this process writes: ``run_dir`` on the chief, ``run_dir-workerN`` on worker N."""
    return with_worker_suffix(run_dir, worker_index(strategy))
