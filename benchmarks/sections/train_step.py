"""Section 1: training throughput of our Keras step against an equivalent PyTorch loop.

Ours is the step ``python train.py`` runs: the model from the trainer's ``build_model``,
the optimizer from ``make_optimizer`` (SGD with momentum, as the Caltech SGD recipe),
the trainer's loss and metrics (``recipes.loss_and_metrics``), driven by the trainer's
own loop (``training/loop.py``: ``model.train_step`` in a tf.function under the
strategy ``train.strategy=auto`` picks on one device) on an in-memory batch repeated by
tf.data (so no decoding is timed here; section 3 times the input pipeline). Step times
are the gaps between consecutive ``on_train_batch_end`` callbacks, so they hold
everything the loop does per step.

PyTorch runs the twin model (benchmarks/torch_models.py) in channels-last memory format
with the same batch, the same optimizer settings and as many threads as TensorFlow's
intra-op pool.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.config import load_config
from keras_caltech.training import loop, recipes
from keras_caltech.training.optim import make_optimizer
from keras_caltech.training.trainer import build_model
from timing import Row, interleaved, rate, skipped

NUM_CLASSES = 256  # Caltech-256 without the clutter class
MODEL_TITLES = {"mycnn": "MyCNN", "resnet18": "ResNet-18"}
# The Caltech-256 SGD recipe's optimizer settings; the schedule is constant so that no
# boundary falls inside the timed steps.
SGD_OVERRIDES = ("train.optimizer=sgd", "train.learning_rate=0.01", "train.momentum=0.9",
                 "train.weight_decay=1e-4", "train.schedule=constant")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags():
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_support():
    """(True, "") when the CPU has bfloat16 arithmetic units, else (False, the reason)."""
    found = sorted(cpu_flags() & set(BF16_FLAGS))
    if found:
        return True, ""
    return False, (f"this CPU has no bfloat16 units (neither {' nor '.join(BF16_FLAGS)} in /proc/cpuinfo): "
                   "bf16 would be emulated in fp32 and cannot be faster")


def intra_op_threads():
    """TensorFlow's intra-op thread count (0 means its default: one per available core)."""
    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


class _StepClock(keras.callbacks.Callback):
    """Records the time at the end of every training batch."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def compile_like_trainer(model, config, num_classes):
    """Compiles ``model`` as the trainer's phases do (training/phases.py)."""
    loss, metrics = recipes.loss_and_metrics(config, num_classes)
    model.compile(optimizer=make_optimizer(config.train, steps_per_epoch=1000), loss=loss, metrics=metrics)
    return model


def random_batch(image_size, batch_size, seed=0):
    """(images float32 (batch, size, size, 3) 0-255, labels int32 (batch,))."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)


def keras_contender(model_name, image_size, batch_size, steps, policy="float32", jit_compile=False):
    """(callable running ``steps`` training steps of train.py's loop and returning their seconds, the model)."""
    config = load_config(None, [f"model.name={model_name}", f"data.image_size={image_size}",
                                f"data.batch_size={batch_size}", *SGD_OVERRIDES])
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = compile_like_trainer(build_model(config, NUM_CLASSES), config, NUM_CLASSES)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # One step more than timed: the first gap would include the loop's set-up.
    dataset = tf.data.Dataset.from_tensors(random_batch(image_size, batch_size)).repeat(steps + 1)
    strategy = tf.distribute.get_strategy()  # what train.strategy=auto uses on one CPU or GPU
    loop.build_training_state(model, strategy, dataset)
    clock = _StepClock()

    def run():
        loop.fit(model, strategy, lambda epoch: dataset, epochs=1, steps_per_epoch=steps + 1, callbacks=[clock],
                 verbose=0, jit_compile=jit_compile)
        return list(np.diff(clock.times))

    return run, model


def torch_contender(model_name, image_size, batch_size, steps, bf16=False):
    """A callable running ``steps`` PyTorch training steps and returning their seconds."""
    import torch

    from torch_models import TORCH_MODELS

    torch.manual_seed(0)
    model = TORCH_MODELS[model_name](NUM_CLASSES).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_function = torch.nn.CrossEntropyLoss()
    images, labels = random_batch(image_size, batch_size)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(labels).long()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_function(model(images), labels)
        loss.backward()
        optimizer.step()

    def run():
        seconds = []
        for _ in range(steps):
            started = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - started)
        return seconds

    return run, model


# One graph function for every matmul contender: one trace per shape and dtype.
_matmul = tf.function(tf.linalg.matmul)


def matmul_contender(size, dtype=tf.float32):
    """A callable running one (size x size) @ (size x size) ``tf.linalg.matmul`` to completion."""
    a = tf.cast(tf.random.normal((size, size), seed=1), dtype)
    b = tf.transpose(a)

    def run():
        _matmul(a, b).numpy()  # .numpy(): wait for the result, not only the dispatch

    return run


def run(options, context):
    """Rows for section 1.

    Stores in ``context``: our fp32 images/s (``train_rate``), the Keras models
    (``keras_models``) and the fp32 matmul GFLOP/s measured in the same rounds as each
    model's steps (``matmul_during``), all keyed by (model name, image size).
    """
    rows = []
    context["train_rate"], context["matmul_during"] = {}, {}
    try:
        import torch
        torch.set_num_threads(intra_op_threads())
        torch_version, torch_reason = torch.__version__, ""
    except ImportError:
        torch_version, torch_reason = None, "torch is not installed (pip install -r benchmarks/requirements.txt)"
    has_bf16, bf16_reason = bf16_support()
    reference = f"PyTorch {torch_version} eager, channels-last, {intra_op_threads()} threads"
    for model_name in options.train_models:
        for image_size in options.train_sizes:
            title = f"{MODEL_TITLES.get(model_name, model_name)} {image_size} px, batch {options.batch_size}"
            # The matmul takes its turn in the same rounds, so that section 2 compares the
            # step's FLOP/s with a peak measured under the same load.
            contenders = {"matmul": matmul_contender(options.matmul_size)}
            ours, keras_model = keras_contender(model_name, image_size, options.batch_size, options.steps)
            contenders["ours"] = ours
            context.setdefault("keras_models", {})[(model_name, image_size)] = keras_model
            if torch_version:
                contenders["torch"], torch_model = torch_contender(
                    model_name, image_size, options.batch_size, options.steps)
                _check_twin(keras_model, torch_model)
            if has_bf16:
                contenders["ours_bf16"], _ = keras_contender(model_name, image_size, options.batch_size,
                                                             options.steps, policy="mixed_bfloat16")
                if torch_version:
                    contenders["torch_bf16"], _ = torch_contender(
                        model_name, image_size, options.batch_size, options.steps, bf16=True)
            seconds = interleaved(contenders, options.repeats, warmup=1)
            images_per_second = {name: rate(options.batch_size, values) for name, values in seconds.items()}
            context["train_rate"][(model_name, image_size)] = images_per_second["ours"]
            context["matmul_during"][(model_name, image_size)] = rate(2 * options.matmul_size ** 3,
                                                                      seconds["matmul"]) / 1e9
            samples = f"median of {len(seconds['ours'])} steps"
            if torch_version:
                rows.append(Row("training", f"{title} fp32: ours (train.py's step)", images_per_second["ours"],
                                "img/s", reference, images_per_second["torch"], goal=1.0, note=samples))
            else:
                rows.append(Row("training", f"{title} fp32: ours (train.py's step)", images_per_second["ours"],
                                "img/s", note=f"{samples}; PyTorch {torch_reason}"))
            bf16_name = f"{title} mixed_bfloat16: ours"
            if not has_bf16:
                rows.append(skipped("training", bf16_name, bf16_reason, goal=1.5))
                continue
            rows.append(Row("training", bf16_name, images_per_second["ours_bf16"], "img/s",
                            "ours fp32", images_per_second["ours"], goal=1.5))
            if torch_version:
                rows.append(Row("training", f"{title} bf16: ours vs PyTorch bf16 autocast",
                                images_per_second["ours_bf16"], "img/s", "PyTorch bf16 autocast",
                                images_per_second["torch_bf16"]))
    return rows


def _check_twin(keras_model, torch_model):
    """Refuses a PyTorch twin whose parameter count differs from our model's."""
    from torch_models import count_parameters

    ours, theirs = keras_model.count_params(), count_parameters(torch_model)
    if ours != theirs:
        raise RuntimeError(f"the PyTorch twin of {keras_model.name} has {theirs:,} parameters, ours "
                           f"{ours:,}: benchmarks/torch_models.py no longer matches the Keras model")

