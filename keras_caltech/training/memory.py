"""Refusing a training batch that cannot fit in memory, before any image is decoded at its size.

A batch's memory grows with the square of ``data.image_size``: at 20000 px one image's
first layer output alone takes gigabytes, and TensorFlow would fail mid-run with
ResourceExhaustedError (or the kernel would kill the process). The estimate below is
made from the model's own layer output shapes, so it holds for every registered model.

How it was calibrated (CPU, TensorFlow 2.21, float32, one compiled training step with
Adam): the peak resident memory a step added was 0.7 to 1.1 times the sum of every
layer's output for the batch (ResNet-50 at 224 px, batch 8, 16 and 32; MyCNN at 224 and
448 px, batch 16). TensorFlow keeps about one copy of each activation for the backward
pass and frees gradients as it goes. The estimate takes :data:`ACTIVATION_MARGIN` times
that sum, plus the weights, their gradients and Adam's two slots, plus the input
batches in flight. ResNet-50 at 224 px with batch 64 comes to about 15 GB, which a
24 GB machine has.

On a GPU the limit is the GPU's memory, which TensorFlow manages itself; the check runs
only when training on the CPU.
"""

import math
import os

import tensorflow as tf

from keras_caltech.errors import UserError

ACTIVATION_MARGIN = 1.5  # x the measured peak of 0.7-1.1 x the layer outputs (module docstring)
PARAMETER_COPIES = 4  # weights, gradients, and Adam's first and second moments
BATCHES_IN_FLIGHT = 4  # input batches held by prefetching, augmentation and the step
SIZE_STEP = 16  # a suggested image size is a multiple of this, as auto sizes are (training/auto.py)


def available_memory_bytes():
    """Memory this process can still take: MemAvailable, capped by a cgroup (container) limit.

    Returns:
        Bytes, or None when the system says nothing (not Linux).
    """
    available = None
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    try:  # cgroup v2: a container's limit, less what it already uses
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            text = limit.read().strip()
            if text != "max":
                left = int(text) - int(current.read())
                available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def training_memory_bytes(model, batch_size):
    """Estimated peak memory of training ``model`` on batches of ``batch_size``.

    Args:
        model: a built Functional Keras model (a flat graph: every layer's output counts).
        batch_size: images per batch.

    Returns:
        Bytes, as an int (see the module docstring for the terms).
    """
    per_image = 0  # bytes of every layer's output for one image
    for layer in model.layers:
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for output in outputs:
            per_image += math.prod(side or 1 for side in output.shape[1:]) * tf.as_dtype(output.dtype).size
    image_values = math.prod(side or 1 for side in model.input_shape[1:])  # (h, w, 3) of one image
    inputs = BATCHES_IN_FLIGHT * batch_size * image_values * 4  # float32 batches
    return int(ACTIVATION_MARGIN * per_image * batch_size + PARAMETER_COPIES * 4 * model.count_params() + inputs)


def check_training_memory(model, image_size, batch_size, available=None):
    """Refuses a training batch that needs more memory than the machine has, suggesting a size that fits.

    Args:
        model: the run's model, built at ``image_size``.
        image_size: ``data.image_size``.
        batch_size: ``data.batch_size``.
        available: bytes available; default :func:`available_memory_bytes`.

    Raises:
        UserError: the estimate exceeds what is available; the message gives both, and
            the largest image size (a multiple of 16) whose estimate fits.
    """
    if tf.config.list_logical_devices("GPU"):
        return
    available = available_memory_bytes() if available is None else available
    needed = training_memory_bytes(model, batch_size)
    if available is None or needed <= available:
        return
    fixed = PARAMETER_COPIES * 4 * model.count_params()  # the part that does not grow with the image
    # Activations grow with the number of pixels, so the side scales with the square root.
    scale = math.sqrt(max(available - fixed, 0) / max(needed - fixed, 1))
    fits = int(image_size * scale) // SIZE_STEP * SIZE_STEP
    hint = (f"use data.image_size={fits} or less, or a smaller data.batch_size" if fits >= SIZE_STEP else
            "use a smaller data.batch_size or model")
    raise UserError(f"data.image_size={image_size} with data.batch_size={batch_size} needs about "
                    f"{needed / 1e9:,.1f} GB of memory to train (every layer's output for a batch, the weights "
                    f"and the optimizer), more than the {available / 1e9:,.1f} GB available; {hint}")
