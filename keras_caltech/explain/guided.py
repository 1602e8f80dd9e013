"""Gradients with respect to the image: plain, guided backpropagation, guided Grad-CAM.

Guided backpropagation (Springenberg et al. 2015) passes a gradient back through a
ReLU only where both the ReLU's input and the incoming gradient are positive. It runs
on a copy of the model whose every ReLU has that gradient (``tf.custom_gradient``):
``keras.models.clone_model(recursive=True)`` walks nested models too, and swaps
``keras.layers.ReLU`` and ``Activation("relu")`` for :class:`GuidedReLU`, and layers
built with ``activation="relu"`` (Conv, Dense, ...) for copies with a guided
activation and the same weights. Every other layer is reused as is, so the copy
shares their weights and the user's model is never changed.

Not reached: a ReLU called inside a custom layer's ``call``, and leaky ReLUs (they
pass negative inputs, so the guided rule does not apply).

Guided backpropagation starts from a class logit (:class:`GuidedBackprop`) or from one
neuron of a 4-D layer, a channel's strongest unit (:class:`GuidedChannelBackprop`).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.errors import UserError
from keras_caltech.explain.gradcam import GradCam, check_batch, upsample
from keras_caltech.explain.model_layers import (as_functional, image_shape,
                                                resolve_spatial_layer, tap_model)


def guided_relu(inputs, max_value=None, threshold=0.0):
    """``keras.activations.relu`` forward; backward only where input and gradient are > 0.

    Args:
        inputs: a float tensor of any shape.
        max_value: the ReLU's ceiling (6 for ReLU6), or None; above it nothing passes back.
        threshold: the ReLU's threshold; at or below it nothing passes back.
    """

    @tf.custom_gradient
    def forward(x):
        outputs = keras.activations.relu(x, threshold=threshold, max_value=max_value)

        def backward(upstream):
            passes = tf.logical_and(x > threshold, upstream > 0)
            if max_value is not None:
                passes = tf.logical_and(passes, x < max_value)
            return upstream * tf.cast(passes, upstream.dtype)

        return outputs, backward

    return forward(inputs)


@keras.saving.register_keras_serializable(package="keras_caltech")
class GuidedReLU(keras.layers.Layer):
    """A ReLU layer whose gradient follows the guided-backpropagation rule.

    Args:
        max_value: ceiling of the ReLU (6.0 for ReLU6), or None.
        threshold: values at or below it map to 0.
    """

    def __init__(self, max_value=None, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_value = None if max_value is None else float(max_value)
        self.threshold = float(threshold)

    def call(self, inputs):
        return guided_relu(inputs, self.max_value, self.threshold)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "threshold": self.threshold}


_RELUS = {keras.activations.relu: (None, 0.0), keras.ops.relu: (None, 0.0), tf.nn.relu: (None, 0.0),
          keras.activations.relu6: (6.0, 0.0), keras.ops.relu6: (6.0, 0.0), tf.nn.relu6: (6.0, 0.0)}


def _relu_parameters(activation):
    """(max_value, threshold) if ``activation`` is a ReLU function, else None."""
    try:
        return _RELUS.get(activation)
    except TypeError:  # an unhashable callable
        return None


def guided_model(model):
    """Returns a copy of ``model`` with guided gradients at every ReLU; ``model`` is unchanged.

    Args:
        model: a Functional or Sequential model, possibly with nested models.

    Returns:
        A Functional model computing the same outputs (batch axis free).
    """
    functional = as_functional(model)
    copies = []  # (copy with a guided activation, original layer)

    def clone_function(layer):
        if isinstance(layer, keras.layers.ReLU):
            if layer.negative_slope:
                return layer  # leaky: not a ReLU for guided backpropagation
            return GuidedReLU(layer.max_value, layer.threshold, name=layer.name)
        relu = _relu_parameters(getattr(layer, "activation", None))
        if relu is None:
            return layer
        if isinstance(layer, keras.layers.Activation):
            return GuidedReLU(*relu, name=layer.name)
        max_value, threshold = relu
        config = layer.get_config()
        config["activation"] = lambda x: guided_relu(x, max_value, threshold)
        # The copy only runs forward with the original's weights: its initializers,
        # regularizers and constraints never act, and dropping them lets layers built
        # with a lambda initializer (not deserializable) be copied too.
        for key in config:
            if key.endswith("_initializer"):
                config[key] = "zeros"
            elif key.endswith(("_regularizer", "_constraint")):
                config[key] = None
        copy = type(layer).from_config(config)
        copies.append((copy, layer))
        return copy

    image = keras.Input(shape=functional.inputs[0].shape[1:], dtype=functional.inputs[0].dtype)
    structure = [image] if isinstance(functional.input, (list, tuple)) else image
    guided = keras.models.clone_model(functional, input_tensors=structure,
                                      clone_function=clone_function, recursive=True)
    for copy, original in copies:  # built while cloning; now give them the trained weights
        copy.set_weights(original.get_weights())
    return guided


class InputGradients:
    """Gradient of a class logit with respect to the image pixels (plain saliency).

    Args:
        model: a Functional or Sequential model, images 0-255 in, logits out.
        batch_size: images per backward pass.
    """

    def __init__(self, model, batch_size=32):
        self.model = model
        self.batch_size = batch_size
        self.image_shape = image_shape(model)
        self._differentiated = self._model_to_differentiate(model)
        self.num_classes = self._differentiated.outputs[0].shape[-1]
        self._gradients = tf.function(self._gradients_graph, autograph=False, input_signature=[
            tf.TensorSpec((None, *self.image_shape), tf.float32), tf.TensorSpec((None,), tf.int32)])

    def _model_to_differentiate(self, model):
        return tap_model(model, [])  # the model on a fresh input with a free batch axis

    def _gradients_graph(self, images, class_indices):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = self._differentiated(images, training=False)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            scores = tf.gather(logits, tf.where(class_indices < 0, predicted, class_indices),
                               batch_dims=1)
        return tape.gradient(scores, images)  # (b, h, w, 3)

    def __call__(self, images, class_indices=None):
        """Returns d logit[class] / d image, float32 (batch, h, w, 3), per 0-255 pixel unit.

        Args:
            images: (batch, h, w, 3) float RGB 0-255.
            class_indices: None (each image's predicted class), an int, or one per image.
        """
        images, class_indices = check_batch(images, class_indices, self.num_classes,
                                            self.image_shape)
        return np.concatenate([
            self._gradients(images[start:start + self.batch_size],
                            class_indices[start:start + self.batch_size]).numpy()
            for start in range(0, len(images), self.batch_size)])


class GuidedBackprop(InputGradients):
    """Guided backpropagation: :class:`InputGradients` through :func:`guided_model`."""

    method = "guided backpropagation"

    def _model_to_differentiate(self, model):
        return guided_model(model)


class GuidedGradCam:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    Args:
        model: as for :class:`GradCam`.
        layer_name: the Grad-CAM layer (default: see :class:`GradCam`).
        batch_size: images per pass.
    """

    method = "guided Grad-CAM"

    def __init__(self, model, layer_name=None, batch_size=32):
        self.gradcam = GradCam(model, layer_name, batch_size)
        self.guided = GuidedBackprop(model, batch_size)

    def __call__(self, images, class_indices=None):
        """Returns (gradients (batch, h, w, 3) float32, the Grad-CAM :class:`CamResult`)."""
        cam = self.gradcam(images, class_indices)
        gradients = self.guided(images, cam.class_indices)
        heatmaps = upsample(cam.heatmaps, gradients.shape[1:3])  # (b, h, w)
        return gradients * heatmaps[..., None], cam


@dataclasses.dataclass(frozen=True)
class ChannelGradients:
    """Guided gradients of one channel's strongest unit, per image.

    Attributes:
        gradients: (batch, h, w, 3) float32, d unit / d image per 0-255 pixel unit.
        positions: (batch, 2) int, (row, col) of the unit in the layer's feature map.
        activations: (batch,) float32, the unit's activation; 0 where the channel is
            silent on the whole image (then the gradient is all zero).
    """

    gradients: np.ndarray
    positions: np.ndarray
    activations: np.ndarray


class GuidedChannelBackprop:
    """Guided backpropagation of one neuron of a 4-D layer, not of a class logit.

    The neuron is the channel's strongest unit on each image (its maximum over the
    feature map), as Zeiler & Fergus (2014) and Springenberg et al. (2015) visualise one
    neuron at its strongest activation: the gradient then lies inside that unit's
    receptive field and shows which of its pixels drive it.

    Args:
        model: a Functional or Sequential model, images 0-255 in.
        layer_name: a 4-D layer (a path for nested models); default: the declared
            Grad-CAM layer, else the last 4-D layer.
        channel: a channel of that layer.
        batch_size: images per backward pass.

    Raises:
        UserError: the layer is missing or not 4-D (the 4-D layers are listed), or the
            channel is out of range.
    """

    method = "guided backpropagation"

    def __init__(self, model, layer_name, channel, batch_size=32):
        self.layer_name = resolve_spatial_layer(model, layer_name)
        self.channel = int(channel)
        self.batch_size = batch_size
        self.image_shape = image_shape(model)
        self._taps = tap_model(guided_model(model), [self.layer_name])  # [activations, logits]
        channels = self._taps.outputs[0].shape[-1]
        if not 0 <= self.channel < channels:
            raise UserError(f"channel {self.channel} is out of range: layer {self.layer_name!r} has "
                            f"{channels} channels (0 to {channels - 1})")
        self._gradients = tf.function(self._gradients_graph, autograph=False, input_signature=[
            tf.TensorSpec((None, *self.image_shape), tf.float32)])

    def _gradients_graph(self, images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            maps = self._taps(images, training=False)[0][..., self.channel]  # (b, h, w)
            flat = tf.reshape(maps, (tf.shape(maps)[0], -1))  # (b, h * w)
            # One unit per image: the argmax picks it, and gathering it (rather than
            # reduce_max, whose gradient is shared among ties) differentiates it alone.
            strongest = tf.argmax(flat, axis=1, output_type=tf.int32)
            units = tf.gather(flat, strongest, batch_dims=1)  # (b,)
        width = tf.shape(maps)[2]
        positions = tf.stack([strongest // width, strongest % width], axis=1)
        return tape.gradient(units, images), positions, units

    def __call__(self, images):
        """Returns the :class:`ChannelGradients` of ``images``, (batch, h, w, 3) float RGB 0-255."""
        images, _ = check_batch(images, None, 1, self.image_shape)
        parts = [self._gradients(images[start:start + self.batch_size])
                 for start in range(0, len(images), self.batch_size)]
        gradients, positions, activations = (np.concatenate([part[i].numpy() for part in parts])
                                             for i in range(3))
        return ChannelGradients(gradients=gradients, positions=positions, activations=activations)
