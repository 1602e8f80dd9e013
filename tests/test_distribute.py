"""Outgrowing one device: MirroredStrategy, MultiWorkerMirroredStrategy, mixed precision, XLA.

The distributed runs are real ``train.py`` runs in subprocesses (a process configures
its devices and cluster once, before TensorFlow starts): two workers on 127.0.0.1 with
TF_CONFIG, and MirroredStrategy over two logical CPU devices. Each must end where a
single-device run on the same global batches ends. Dropout is off for the comparison:
its masks are drawn per replica, so they legitimately differ from one device's.
Agreement is to a tolerance, not bit for bit: the replicas' gradients are summed by an
all-reduce in a different order than one device sums them. The comparison trains on
noise images: the synthetic shapes' flat colour regions make exact ties in max pooling,
and which of two tied pixels gets the gradient then depends on that rounding, a
legitimate difference far above the tolerance. Weight decay is on, as PyTorch's L2 term,
which must count once per step, not once per replica.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
import pytest
from PIL import Image

import train
from keras_caltech.config import load_config
from keras_caltech.errors import UserError
from keras_caltech.models import create_model, list_models
from keras_caltech.models.loading import load_model_safely
from keras_caltech.training import distribute, loop, precision
from keras_caltech.training.optim import make_optimizer
from keras_caltech.training.resume import STATE_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "train_driver.py")
RUN = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.cache_dir=",
       "--set", "train.tensorboard=false", "--set", "train.epochs=1", "--set", "model.dropout=0",
       "--set", "train.optimizer=sgd", "--set", "train.learning_rate=0.01", "--set", "train.schedule=constant",
       "--set", "export.enabled=false", "--set", "train.weight_decay=0.05", "--set", "model.name=mycnn"]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command, folder, name, env=None):
    with open(folder / f"{name}.out", "w") as stdout, open(folder / f"{name}.err", "w") as stderr:
        return subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr, text=True,
                                env={**os.environ, **(env or {})})


def _finish(process, folder, name):
    try:
        code = process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, (folder / f"{name}.err").read_text()[-4000:]
    return (folder / f"{name}.out").read_text()


@pytest.fixture(scope="module")
def noise_dataset(tmp_path_factory):
    """4 classes x 12 PNGs of uniform noise, 48x48: no flat regions, so no ties in max pooling."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for label in range(4):
        folder = root / f"{label + 1:03d}.noise{label}"
        folder.mkdir()
        for index in range(12):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{index:02d}.png")
    return root


@pytest.fixture(scope="module")
def multiworker_run(noise_dataset, tmp_path_factory):
    """Two train.py workers on 127.0.0.1, each with its TF_CONFIG, run to the end; returns their folder."""
    folder = tmp_path_factory.mktemp("multiworker")
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(_start(
            [sys.executable, "train.py", "--data", str(noise_dataset), "--output-dir", str(folder / "run"),
             "--strategy", "multiworker", *RUN], folder, f"worker{index}", {"TF_CONFIG": tf_config}))
    outputs = [_finish(process, folder, f"worker{index}") for index, process in enumerate(processes)]
    assert all("on 2 replica(s)" in output for output in outputs), outputs
    return folder


@pytest.fixture(scope="module")
def single_device_run(noise_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    assert train.main(["--data", str(noise_dataset), "--output-dir", str(run_dir), "--strategy", "one", *RUN]) == 0
    return run_dir


def _weights(run_dir):
    """The model variables of a run's final training state (optimizer slots left out)."""
    with np.load(run_dir / STATE_FILE) as saved:
        return {name: saved[name] for name in saved.files if name.startswith("model_")}


def test_two_workers_end_with_identical_weights_equal_to_one_device(multiworker_run, single_device_run):
    chief, other = _weights(multiworker_run / "run"), _weights(multiworker_run / "run-worker1")
    single = _weights(single_device_run)
    assert sorted(chief) == sorted(other) == sorted(single)
    for name in single:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)  # one all-reduced update
        np.testing.assert_allclose(chief[name], single[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert (multiworker_run / "run" / "metrics.json").is_file()
    assert (multiworker_run / "run-worker1" / "metrics.json").is_file()  # worker 1 writes beside the chief


def test_mirrored_strategy_on_two_logical_cpus_matches_one_device(noise_dataset, tmp_path, single_device_run):
    """Also runs train.deterministic=true (process-wide and irreversible, so not in the test process)."""
    process = _start([sys.executable, DRIVER, "two-cpus", "-", "--", "--data", str(noise_dataset),
                      "--output-dir", str(tmp_path / "run"), "--strategy", "mirrored", *RUN,
                      "--set", "train.deterministic=true"], tmp_path, "mirrored")
    assert "on 2 replica(s) (CPU, CPU)" in _finish(process, tmp_path, "mirrored")
    mirrored, single = _weights(tmp_path / "run"), _weights(single_device_run)
    for name in single:
        np.testing.assert_allclose(mirrored[name], single[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture()
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")  # the policy is global: leave it as found


def test_a_tiny_bfloat16_run_trains_and_gives_finite_float32_logits(tiny_dataset, tmp_path, capsys,
                                                                    float32_afterwards):
    run_dir = tmp_path / "run"
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *RUN,
                       "--set", "train.precision=mixed_bfloat16"])
    assert code == 0, capsys.readouterr().err
    assert "mixed_bfloat16" in capsys.readouterr().out
    model = load_model_safely(run_dir / "best.keras")
    assert model.get_layer("block1_conv").compute_dtype == "bfloat16"
    assert all(variable.dtype == "float32" for variable in model.trainable_variables)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    logits = model(images, training=False)
    assert logits.dtype == "float32" and np.isfinite(np.asarray(logits)).all()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["loss"])


def test_mixed_float16_gets_loss_scaling_from_compile_and_is_refused_without_a_gpu(float32_afterwards):
    keras.mixed_precision.set_global_policy("mixed_float16")  # as set_precision would on a GPU
    config = load_config(None, ["train.schedule=constant"])
    model = create_model("mycnn", 3, 32)
    model.compile(optimizer=make_optimizer(config.train, 10),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.output.dtype == "float32"
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(UserError, match="mixed_float16 needs a GPU"):
            precision.set_precision("mixed_float16")
    with pytest.raises(UserError, match="Valid precisions: float32, mixed_float16, mixed_bfloat16"):
        precision.set_precision("float8")


def test_a_progressive_stage_continues_the_loss_scaled_optimizer_of_the_stage_before(float32_afterwards):
    from keras_caltech.training import phases

    keras.mixed_precision.set_global_policy("mixed_float16")
    config = load_config(None, ["train.optimizer=sgd"])
    models = []
    for _ in range(2):
        model = create_model("mycnn", 3, 32)
        model.compile(optimizer=make_optimizer(config.train, 10),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        models.append(model)
    previous, model = models
    previous.optimizer.build(previous.trainable_variables)
    previous.optimizer.inner_optimizer.iterations.assign(7)
    optimizer = make_optimizer(config.train, 10)  # what PhaseRunner.enter gives the next stage
    phases._continue_optimizer(optimizer, previous.optimizer, model)
    assert int(optimizer.iterations.numpy()) == 7


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_computes_float32_logits_under_mixed_precision(name, float32_afterwards):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    from keras_caltech.models import get_model_entry

    model = create_model(name, 3, get_model_entry(name).min_image_size)
    assert model.output.dtype == "float32" and model.get_layer("logits").compute_dtype == "float32"


def test_the_xla_compiled_step_trains_like_the_plain_one():
    """XLA through the same loop, on a model small enough to compile in seconds on a CPU
    (MyCNN's XLA compile takes most of a minute there: a benchmark, not a test)."""
    images = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype(np.float32)
    labels = np.arange(16, dtype=np.int32) % 3
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    strategy = tf.distribute.get_strategy()
    weights = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                  keras.layers.Dense(3, name="logits")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        loop.build_training_state(model, strategy, dataset)
        history = loop.fit(model, strategy, lambda epoch: dataset, epochs=2, steps_per_epoch=4,
                           validation_data=dataset, verbose=0, jit_compile=jit_compile)
        assert history.epoch == [0, 1] and len(history.history["val_accuracy"]) == 2
        weights.append(model.get_weights())
    for plain, compiled in zip(*weights):
        np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)


def test_strategy_names_and_tf_config_are_checked(monkeypatch):
    with pytest.raises(UserError, match="Valid strategies: auto, one, mirrored, multiworker"):
        distribute.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="multiworker needs the TF_CONFIG.*index"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG is not valid"):
        distribute.make_strategy("auto")
    monkeypatch.delenv("TF_CONFIG")
    if not tf.config.list_physical_devices("GPU"):
        assert distribute.make_strategy("auto").num_replicas_in_sync == 1


def test_worker_folders_are_named_from_the_chiefs_and_a_resume_finds_its_own(tmp_path, monkeypatch):
    from keras_caltech.training.resume import load_run_config

    assert distribute.with_worker_suffix(tmp_path / "big", 0) == tmp_path / "big"
    assert distribute.with_worker_suffix(tmp_path / "big", 2) == tmp_path / "big-worker2"
    assert distribute.with_worker_suffix(tmp_path / "big-worker2", 2) == tmp_path / "big-worker2"
    (tmp_path / "big-worker1").mkdir()  # on worker 1's machine there is no copy of the chief's folder
    (tmp_path / "big-worker1" / "config.yaml").write_text("train: {epochs: 4}\n")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert load_run_config(tmp_path / "big").train.epochs == 4
