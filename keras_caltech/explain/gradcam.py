"""Class activation maps: Grad-CAM, Grad-CAM++ and Score-CAM.

Each explainer is built once per model and layer and then called on batches:
``GradCam(model)(images, class_indices) -> CamResult``. Images are what the model takes
(float32 RGB 0-255, it normalizes them itself); maps come out at the feature-map
resolution, and :func:`upsample` brings them to the image's.

A map is ReLU'd and divided by its maximum. When nothing survives the ReLU, the
evidence in the image argues against the class: the map is reported ``empty`` (all
zeros), never NaN.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_caltech.errors import UserError
from keras_caltech.explain.model_layers import (image_shape, is_image_batch,
                                                resolve_spatial_layer, tap_model)

# A map whose positive part is below this share of its largest magnitude is rounding
# noise around zero, not evidence.
_EMPTY_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class CamResult:
    """Class activation maps for a batch of images.

    Attributes:
        heatmaps: (batch, h, w) float32 in [0, 1], each divided by its maximum.
        empty: (batch,) bool, True where no location supports the class (heatmap all 0).
        raw: (batch, h, w) float32 >= 0, the ReLU'd maps before normalization.
        class_indices: (batch,) int, the explained classes (predicted ones if not given).
        probabilities: (batch, num_classes) float32, softmax of the model's logits.
    """

    heatmaps: np.ndarray
    empty: np.ndarray
    raw: np.ndarray
    class_indices: np.ndarray
    probabilities: np.ndarray


def check_batch(images, class_indices, num_classes, expected_shape):
    """Validates a batch and its targets for an explainer.

    Args:
        images: (batch, h, w, 3) array-like, RGB 0-255.
        class_indices: None (the predicted class of each image), one int for every
            image, or a sequence with one int per image.
        num_classes: the model's number of logits.
        expected_shape: the model's (h, w, 3); None entries accept any size.

    Returns:
        images as float32 (batch, h, w, 3) and class indices as int32 (batch,), where
        -1 stands for "the predicted class".

    Raises:
        UserError: wrong image rank or size, count mismatch, or an index out of range.
    """
    images = np.asarray(images, dtype=np.float32)
    if not is_image_batch(images, expected_shape):
        raise UserError(
            f"explainers take a batch of images shaped (batch, {', '.join(map(str, expected_shape))}) "
            f"in RGB 0-255. Received shape {images.shape}; add a batch axis with "
            f"images[None] for a single image.")
    batch = len(images)
    if batch == 0:
        raise UserError("explainers need at least one image. Received an empty batch")
    if class_indices is None:
        return images, np.full(batch, -1, np.int32)
    indices = np.asarray(class_indices)
    if indices.ndim == 0:
        indices = np.full(batch, int(indices))
    if indices.ndim != 1 or len(indices) != batch:
        raise UserError(f"one class index per image is needed. Received {batch} images and "
                        f"class_indices of shape {indices.shape}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise UserError(f"class indices must be integers. Received dtype {indices.dtype}")
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        raise UserError(f"class index {int(bad[0])} is out of range: the model has "
                        f"{num_classes} classes (0 to {num_classes - 1})")
    return images, indices.astype(np.int32)


def normalize_maps(raw):
    """ReLU'd maps divided by their maxima.

    Args:
        raw: (batch, h, w) float maps before the ReLU.

    Returns:
        heatmaps (batch, h, w) float32 in [0, 1], the ReLU'd maps (batch, h, w), and
        empty (batch,) bool; empty maps are all zero.
    """
    raw = np.asarray(raw, dtype=np.float32)
    positive = np.maximum(raw, 0.0)
    peak = positive.max(axis=(1, 2))
    scale = np.abs(raw).max(axis=(1, 2))
    empty = peak <= _EMPTY_TOLERANCE * scale
    safe_peak = np.where(empty, 1.0, peak)[:, None, None]
    heatmaps = np.where(empty[:, None, None], 0.0, positive / safe_peak).astype(np.float32)
    return heatmaps, np.where(empty[:, None, None], 0.0, positive).astype(np.float32), empty


def upsample(heatmaps, size):
    """Resizes maps bilinearly to the image size.

    Args:
        heatmaps: (batch, h, w) or (h, w) float maps in [0, 1].
        size: (height, width) of the image.

    Returns:
        float32 maps (batch, height, width) or (height, width), clipped to [0, 1].
    """
    maps = np.asarray(heatmaps, dtype=np.float32)
    single = maps.ndim == 2
    maps = maps[None] if single else maps
    resized = tf.image.resize(maps[..., None], size, method="bilinear")[..., 0].numpy()
    resized = np.clip(resized, 0.0, 1.0)
    return resized[0] if single else resized


def _tap_layer(explainer, model, layer_name, batch_size):
    """Sets what every CAM explainer keeps: the model, its explained layer, and a sub-model
    ``_taps`` whose outputs are that layer's activations and the logits.

    Raises:
        UserError: the layer is missing or not 4-D.
    """
    explainer.model = model
    explainer.layer_name = resolve_spatial_layer(model, layer_name)
    explainer.batch_size = batch_size
    explainer.image_shape = image_shape(model)
    explainer._taps = tap_model(model, [explainer.layer_name])  # outputs: [activations, logits]
    explainer.num_classes = explainer._taps.outputs[-1].shape[-1]


class GradCam:
    """Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient.

    For the class score ``y`` (a logit) and the chosen layer's activations ``A``
    (h, w, channels): ``map = ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij dy/dA_kij``.

    Args:
        model: a Functional or Sequential model, images 0-255 in, logits out.
        layer_name: the 4-D layer to explain (a path for nested models); default:
            the registered ``gradcam_layer``, else the last 4-D layer.
        batch_size: images per forward/backward pass.

    Raises:
        UserError: the layer is missing or not 4-D, or the class scores do not depend on
            it (no gradient reaches it).
    """

    method = "Grad-CAM"

    def __init__(self, model, layer_name=None, batch_size=32):
        _tap_layer(self, model, layer_name, batch_size)
        # One trace for every batch size: a fixed signature with a free batch axis.
        # Tracing now makes a disconnected layer fail here rather than at first use.
        # autograph=False: the graph has no Python control flow on tensors, and errors
        # raised while tracing then reach the caller as they are (not as StagingError).
        self._maps = tf.function(self._maps_graph, autograph=False, input_signature=[
            tf.TensorSpec((None, *self.image_shape), tf.float32),
            tf.TensorSpec((None,), tf.int32)])
        self._maps.get_concrete_function()

    def _maps_graph(self, images, class_indices):
        with tf.GradientTape() as tape:
            activations, logits = self._taps(images, training=False)  # (b, h, w, c), (b, classes)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            class_indices = tf.where(class_indices < 0, predicted, class_indices)
            scores = tf.gather(logits, class_indices, batch_dims=1)  # (b,)
        # Images are independent at inference, so the gradient of the summed scores
        # holds each image's own gradient.
        gradients = tape.gradient(scores, activations)
        if gradients is None:
            raise UserError(
                f"the class scores of model {self.model.name!r} do not depend on layer "
                f"{self.layer_name!r} (no gradient reaches it): pick a layer on the path "
                f"to the logits.")
        weights = self._channel_weights(activations, gradients)  # (b, c)
        maps = tf.einsum("bhwc,bc->bhw", activations, weights)  # (b, h, w), before ReLU
        return maps, tf.nn.softmax(logits), class_indices

    def _channel_weights(self, activations, gradients):
        return tf.reduce_mean(gradients, axis=(1, 2))

    def __call__(self, images, class_indices=None):
        """Explains ``class_indices`` in ``images``; see :class:`CamResult`.

        Args:
            images: (batch, h, w, 3) float RGB 0-255, the model's input size.
            class_indices: None (each image's predicted class), an int, or one per image.
        """
        images, class_indices = check_batch(images, class_indices, self.num_classes,
                                            self.image_shape)
        parts = [self._maps(images[start:start + self.batch_size],
                            class_indices[start:start + self.batch_size])
                 for start in range(0, len(images), self.batch_size)]
        maps, probabilities, explained = (np.concatenate([part[i].numpy() for part in parts])
                                          for i in range(3))
        heatmaps, raw, empty = normalize_maps(maps)
        return CamResult(heatmaps=heatmaps, empty=empty, raw=raw, class_indices=explained,
                         probabilities=probabilities)


class GradCamPlusPlus(GradCam):
    """Grad-CAM++ (Chattopadhyay et al. 2018): pixel-weighted positive gradients.

    With the class score taken as ``exp(logit)``, the higher derivatives are powers of
    the first, giving ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` and
    ``w_k = sum_ij alpha_kij ReLU(g_kij)`` (the common ``exp(logit)`` factor cancels
    in the normalized map).
    """

    method = "Grad-CAM++"

    def _channel_weights(self, activations, gradients):
        squared = tf.square(gradients)
        activation_sums = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)  # (b, 1, 1, c)
        denominator = 2.0 * squared + activation_sums * squared * gradients
        alpha = tf.math.divide_no_nan(squared, denominator)
        return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2))


class ScoreCam:
    """Score-CAM (Wang et al. 2020): feature maps weighted by the class probability they keep.

    Each channel ``A_k``, upsampled to the image and scaled to [0, 1], masks the image
    (masked-out pixels become black, value 0); the class probability of the masked
    image is the channel's weight: ``map = ReLU(sum_k p_k A_k)``. Costs one forward pass
    per (image, channel), run ``batch_size`` masked images at a time. Channels that are
    constant on an image carry no location and are skipped.

    Args:
        model, layer_name, batch_size: as for :class:`GradCam`.
    """

    method = "Score-CAM"

    def __init__(self, model, layer_name=None, batch_size=32):
        _tap_layer(self, model, layer_name, batch_size)
        spec = tf.TensorSpec((None, *self.image_shape), tf.float32)
        self._forward = tf.function(lambda images: self._taps(images, training=False),
                                    input_signature=[spec])
        self._probabilities = tf.function(
            lambda images: tf.nn.softmax(self._taps(images, training=False)[-1]),
            input_signature=[spec])

    def __call__(self, images, class_indices=None):
        """Explains ``class_indices`` in ``images``; see :class:`CamResult`."""
        images, class_indices = check_batch(images, class_indices, self.num_classes,
                                            self.image_shape)
        maps, probabilities = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            activations, logits = (tensor.numpy() for tensor in self._forward(chunk))
            maps.append(activations)
            probabilities.append(tf.nn.softmax(logits).numpy())
        activations, probabilities = np.concatenate(maps), np.concatenate(probabilities)
        class_indices = np.where(class_indices < 0, probabilities.argmax(-1), class_indices)
        raw = np.stack([self._one_map(image, activation, class_index)
                        for image, activation, class_index in zip(images, activations, class_indices)])
        heatmaps, raw, empty = normalize_maps(raw)
        return CamResult(heatmaps=heatmaps, empty=empty, raw=raw,
                         class_indices=class_indices.astype(np.int32), probabilities=probabilities)

    def _one_map(self, image, activations, class_index):
        """Score-CAM map before ReLU for one image; activations (h, w, c)."""
        low, high = activations.min(axis=(0, 1)), activations.max(axis=(0, 1))
        channels = np.flatnonzero(high > low)
        weights = np.zeros(activations.shape[-1], np.float32)
        size = image.shape[:2]
        for start in range(0, len(channels), self.batch_size):
            chosen = channels[start:start + self.batch_size]
            masks = (activations[..., chosen] - low[chosen]) / (high[chosen] - low[chosen])
            masks = tf.image.resize(masks[None], size, method="bilinear")[0].numpy()  # (H, W, k)
            masked = image[None] * np.moveaxis(masks, -1, 0)[..., None]  # (k, H, W, 3)
            weights[chosen] = self._probabilities(masked.astype(np.float32)).numpy()[:, class_index]
        return np.einsum("hwc,c->hw", activations, weights)
