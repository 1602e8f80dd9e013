"""Mixed precision: compute in 16 bits where the hardware is fast at it, keep variables in float32.

    train.precision   compute dtype   where it pays
    float32           float32         everywhere (the default)
    mixed_float16     float16         NVIDIA GPUs with tensor cores
    mixed_bfloat16    bfloat16        TPUs, recent GPUs, CPUs with AVX512-BF16 or AMX

The policy must be set before the model is built. Two details keep training stable:

- every registered model computes its ``logits`` layer in float32 (see models/registry.py),
  so the softmax cross-entropy never runs in 16 bits;
- float16 needs loss scaling, or small gradients underflow to zero. ``Model.compile``
  wraps the optimizer in ``keras.optimizers.LossScaleOptimizer`` itself when the model's
  policy is mixed_float16 (tests/test_distribute.py checks this); bfloat16 has float32's
  exponent range and needs none.
"""

import pathlib

import keras
import tensorflow as tf

from keras_caltech.config import PRECISIONS
from keras_caltech.errors import UserError


def cpu_has_bfloat16():
    """True if the CPU has native bfloat16 instructions (Linux only; False when unknown)."""
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_precision(name, log=print):
    """Sets Keras' global dtype policy for the models built next.

    Args:
        name: one of :data:`PRECISIONS`.
        log: where a note about slow emulated bfloat16 goes.

    Raises:
        UserError: unknown name, or mixed_float16 without a GPU (float16 math on a CPU is
            emulated and slower than float32).
    """
    if name not in PRECISIONS:
        raise UserError(f"unknown train.precision {name!r}. Valid precisions: {', '.join(PRECISIONS)}")
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if name == "mixed_float16" and not has_gpu:
        raise UserError("train.precision=mixed_float16 needs a GPU; float16 on a CPU is emulated and slower "
                        "than float32. Use mixed_bfloat16 on a CPU with bfloat16 support, or float32")
    if name == "mixed_bfloat16" and not has_gpu and not cpu_has_bfloat16():
        log("note: this CPU has no native bfloat16 (AVX512-BF16/AMX); mixed_bfloat16 works but is "
            "emulated and likely slower than float32")
    keras.mixed_precision.set_global_policy(name)
