"""Receptive fields: which input pixels a unit of a feature map can see.

Computed from the layer stack, not measured: each Conv/Pool layer with kernel ``k``
(dilated: ``d * (k - 1) + 1``), stride ``s`` and leading padding ``p`` maps the field
of its input (size ``r``, jump ``j`` between neighbouring units, centre ``c`` of unit 0)
to ``r + (k - 1) * j``, ``j * s``, ``c + ((k - 1) / 2 - p) * j``. Padding ``"same"``
follows TensorFlow: the total ``max(k - s, 0)`` (or ``max(k - n % s, 0)`` when the input
size ``n`` is not a multiple of ``s``), the smaller half first. Layers that keep the
spatial size and have no kernel (BatchNorm, activations, Add, Concatenate, the
model's normalization) are pointwise. Where branches merge, the widest field wins.
"""

from typing import NamedTuple

import keras

from keras_caltech.errors import UserError
from keras_caltech.explain.model_layers import as_functional, find_layer


class ReceptiveField(NamedTuple):
    """The input window of the units of one feature map.

    Attributes:
        size: side of the square window in input pixels (it may reach past the border).
        stride: input pixels between neighbouring units.
        offset: input pixel coordinate (row and column) of the centre of unit (0, 0);
            may be fractional or negative.
    """

    size: int
    stride: int
    offset: float

    def box(self, row, col, image_size):
        """Returns the window of unit (row, col) as ``[x0, y0, x1, y1)`` clipped to the image.

        Args:
            row, col: unit position in the feature map.
            image_size: (height, width) of the input image.
        """
        half = (self.size - 1) / 2
        centre_y = self.offset + row * self.stride
        centre_x = self.offset + col * self.stride
        y0 = max(0, int(round(centre_y - half)))
        x0 = max(0, int(round(centre_x - half)))
        y1 = min(image_size[0], int(round(centre_y + half)) + 1)
        x1 = min(image_size[1], int(round(centre_x + half)) + 1)
        return x0, y0, x1, y1


class _Unknown(NamedTuple):
    """Marks a tensor whose field is the whole image or cannot be computed; says why."""

    reason: str


_IDENTITY = ((1.0, 1.0, 0.0), (1.0, 1.0, 0.0))  # per axis (size, jump, centre of unit 0)


def receptive_field(model, layer_name):
    """Returns the receptive field of the units of a 4-D layer.

    Args:
        model: a Functional or Sequential model, possibly with nested models.
        layer_name: a layer path, e.g. ``"block4_relu"`` or ``"backbone/conv2"``.

    Returns:
        ReceptiveField(size, stride, offset), in pixels of the model's input.

    Raises:
        UserError: unknown layer, a layer between the input and ``layer_name`` whose
            geometry is unknown (e.g. resizing), or a non-square field.
    """
    find_layer(model, layer_name)
    axes = _fields_through(model, layer_name)
    if isinstance(axes, _Unknown):
        raise UserError(f"cannot compute the receptive field of layer {layer_name!r}: {axes.reason}")
    (size_y, jump_y, start_y), (size_x, jump_x, start_x) = axes
    if (size_y, jump_y, start_y) != (size_x, jump_x, start_x):
        raise UserError(
            f"layer {layer_name!r} has a non-square receptive field (rows: size {size_y:g}, "
            f"stride {jump_y:g}; columns: size {size_x:g}, stride {jump_x:g}); use a square "
            f"input and square kernels.")
    return ReceptiveField(int(size_y), int(jump_y), float(start_y))


def _compose(outer, inner):
    """The field of ``inner`` (relative to a nested model's input) seen from the image."""
    if isinstance(outer, _Unknown):
        return outer
    if isinstance(inner, _Unknown):
        return inner
    return tuple((size + (inner_size - 1) * jump, jump * inner_jump, start + inner_start * jump)
                 for (size, jump, start), (inner_size, inner_jump, inner_start) in zip(outer, inner))


def _fields_through(model, path=None):
    """Per-axis fields of layer ``path`` (or the model output) relative to the model input."""
    functional = as_functional(model)
    top, rest = (path.split("/", 1) + [None])[:2] if path else (None, None)
    fields = {}  # id(tensor) -> field
    alive = []  # keeps tensors referenced so their ids are not reused
    found = {}

    def call_function(layer, *args, **kwargs):
        inputs = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        outputs = layer(*args, **kwargs)
        output_tensors = keras.tree.flatten(outputs)
        alive.extend(inputs + output_tensors)
        known = [fields[id(t)] for t in inputs if id(t) in fields]
        field_in = _merge(layer, known)
        if isinstance(layer, keras.Model):
            if layer.name == top and rest is not None:
                found.setdefault("field", _compose(field_in, _fields_through(layer, rest)))
            field_out = _compose(field_in, _fields_through(layer))
        else:
            field_out = _layer_field(layer, field_in, inputs[0].shape, output_tensors[0].shape)
        if layer.name == top and rest is None:
            found.setdefault("field", field_out)
        for tensor in output_tensors:
            fields[id(tensor)] = field_out
        return outputs

    image = keras.Input(shape=functional.inputs[0].shape[1:], dtype=functional.inputs[0].dtype)
    fields[id(image)] = _IDENTITY
    structure = [image] if isinstance(functional.input, (list, tuple)) else image
    clone = keras.models.clone_model(functional, input_tensors=structure,
                                     clone_function=lambda layer: layer,
                                     call_function=call_function)
    if path is None:
        output = clone.outputs[0]
        if len(output.shape) != 4:
            return _Unknown(f"model {model.name!r} ends in a {len(output.shape)}-D output")
        return fields[id(output)]
    return found["field"]


def _merge(layer, known):
    """The field entering ``layer``: the widest of its inputs' fields."""
    spatial = [field for field in known if not isinstance(field, _Unknown)]
    if not spatial:
        return known[0] if known else _Unknown("it is not connected to the image input")
    widest = max(spatial, key=lambda field: field[0][0] + field[1][0])
    if any(field[0][1] != widest[0][1] or field[1][1] != widest[1][1] for field in spatial):
        return _Unknown(f"layer {layer.name!r} merges feature maps of different strides")
    return widest


def _layer_field(layer, field, input_shape, output_shape):
    """The field after one (non-model) layer, given the field of its input."""
    if isinstance(field, _Unknown):
        return field
    if len(output_shape) != 4:
        return _Unknown(f"layer {layer.name!r} ({type(layer).__name__}) has a "
                        f"{len(output_shape)}-D output: it sees the whole image")
    if len(input_shape) != 4:
        return _Unknown(f"layer {layer.name!r} gets a {len(input_shape)}-D input")
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return _Unknown(f"layer {layer.name!r} is a transposed convolution (upsampling)")
    kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    if kernel is not None:
        strides = layer.strides or kernel  # pooling: strides=None means the pool size
        dilation = getattr(layer, "dilation_rate", (1, 1))
        return tuple(
            _through_kernel(axis_field, dilation[axis] * (kernel[axis] - 1) + 1, strides[axis],
                            layer.padding, input_shape[axis + 1])
            for axis, axis_field in enumerate(field))
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return tuple((size, jump, start - layer.padding[axis][0] * jump)
                     for axis, (size, jump, start) in enumerate(field))
    if isinstance(layer, keras.layers.Cropping2D):
        return tuple((size, jump, start + layer.cropping[axis][0] * jump)
                     for axis, (size, jump, start) in enumerate(field))
    if isinstance(layer, (keras.layers.AdaptiveAveragePooling2D, keras.layers.AdaptiveMaxPooling2D)):
        windows = []
        for axis, axis_field in enumerate(field):
            size_in, size_out = input_shape[axis + 1], output_shape[axis + 1]
            if size_in is None or size_in % size_out:
                return _Unknown(f"adaptive pooling {layer.name!r} maps {size_in} to {size_out} "
                                f"with windows of unequal size")
            windows.append(_through_kernel(axis_field, size_in // size_out, size_in // size_out,
                                           "valid", size_in))
        return tuple(windows)
    if tuple(input_shape[1:3]) == tuple(output_shape[1:3]):
        return field  # pointwise: BatchNorm, activations, merges, normalization
    return _Unknown(f"layer {layer.name!r} ({type(layer).__name__}) changes the spatial size "
                    f"from {tuple(input_shape[1:3])} to {tuple(output_shape[1:3])} in a way "
                    f"this library does not model")


def _through_kernel(axis_field, kernel, stride, padding, input_size):
    """One axis of the field after a window of ``kernel`` pixels moved by ``stride``."""
    size, jump, start = axis_field
    if padding == "same":
        if input_size is None or input_size % stride == 0:
            total = max(kernel - stride, 0)
        else:
            total = max(kernel - input_size % stride, 0)
        before = total // 2
    else:
        before = 0
    return size + (kernel - 1) * jump, jump * stride, start + ((kernel - 1) / 2 - before) * jump
