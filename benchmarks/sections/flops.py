"""Section 2: achieved FLOP/s of our training step against the machine's measured matmul peak.

Forward FLOPs are counted from the layer shapes (a multiply-add is 2 FLOPs; only
convolutions and dense layers are counted, the rest of a CNN is well under 1% of its
arithmetic), a training step is taken as 3x the forward pass (forward, gradient with
respect to the inputs, gradient with respect to the weights), and the peak is what a
large ``tf.linalg.matmul`` achieves on this machine with the same threads: the best
case for the arithmetic units. On a shared machine that peak moves with the load from
minute to minute, so each step is compared with the matmul timed in the same rounds as
it (section 1 runs it as one more contender); the stand-alone fp32 and bf16 rows are
for reference.
"""

import math

import keras
import tensorflow as tf

from timing import Row, interleaved, rate
from sections.train_step import MODEL_TITLES, bf16_support, matmul_contender

# The goal: ResNet-18 at 224 px reaches half the fp32 matmul peak.
FLOPS_GOAL = {("resnet18", 224): 0.5}


def _spatial(shape):
    """Positions of a (batch, ..., channels) shape, batch and channels excluded."""
    return math.prod(shape[1:-1])


def layer_flops(layer):
    """Forward FLOPs per image of one Conv2D, DepthwiseConv2D, SeparableConv2D or Dense layer (else 0)."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        in_channels, out_positions = layer.input.shape[-1], _spatial(layer.output.shape)
        depthwise = math.prod(layer.kernel_size) * in_channels * layer.depth_multiplier
        pointwise = in_channels * layer.depth_multiplier * layer.filters
        return 2 * out_positions * (depthwise + pointwise)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        in_channels = layer.input.shape[-1]
        return 2 * _spatial(layer.output.shape) * math.prod(layer.kernel_size) * in_channels * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2D):
        in_channels = layer.input.shape[-1] // layer.groups
        return 2 * _spatial(layer.output.shape) * math.prod(layer.kernel_size) * in_channels * layer.filters
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(layer.input.shape[1:]) * layer.units
    return 0


def forward_flops(model):
    """Forward FLOPs per image of a Functional model (nested models included)."""
    total = 0
    for layer in model.layers:
        total += forward_flops(layer) if isinstance(layer, keras.Model) else layer_flops(layer)
    return total


def matmul_peaks(size, repeats):
    """Measured GFLOP/s of a (size x size) @ (size x size) matmul: {"float32": ..., "bfloat16": ...}."""
    contenders = {dtype.name: matmul_contender(size, dtype) for dtype in (tf.float32, tf.bfloat16)}
    seconds = interleaved(contenders, repeats, warmup=1)
    return {name: rate(2 * size ** 3, values) / 1e9 for name, values in seconds.items()}


def run(options, context):
    """Rows for section 2 (needs section 1's ``context["train_rate"]`` and models)."""
    peaks = matmul_peaks(options.matmul_size, options.matmul_repeats)
    context["matmul_peaks"] = peaks
    has_bf16, bf16_reason = bf16_support()
    matmul = f"tf.linalg.matmul {options.matmul_size}x{options.matmul_size}"
    rows = [Row("flops", f"dense matmul peak, fp32 ({matmul})", peaks["float32"], "GFLOP/s",
                note="measured on its own; the rows below use the same matmul timed in turn with each step"),
            Row("flops", f"dense matmul, bf16 ({matmul})", peaks["bfloat16"], "GFLOP/s", "fp32 matmul",
                peaks["float32"],
                note="" if has_bf16 else "no bf16 units on this CPU: bf16 is converted and computed in fp32")]
    for (model_name, image_size), images_per_second in context.get("train_rate", {}).items():
        model = context["keras_models"][(model_name, image_size)]
        flops = forward_flops(model)
        achieved = 3 * flops * images_per_second / 1e9
        peak = context.get("matmul_during", {}).get((model_name, image_size), peaks["float32"])
        rows.append(Row(
            "flops", f"{MODEL_TITLES.get(model_name, model_name)} {image_size} px: our fp32 training step",
            achieved, "GFLOP/s", "fp32 matmul, timed in turn with this step", peak,
            goal=FLOPS_GOAL.get((model_name, image_size)),
            note=f"{flops / 1e9:.2f} GFLOP forward per image x 3 x {images_per_second:.1f} img/s"))
    return rows
