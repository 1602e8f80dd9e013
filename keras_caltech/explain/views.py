"""What the network computes: feature maps of one image, and the image patches that
most excite one unit across many images (Zeiler & Fergus 2014).

A unit is a channel of a 4-D layer or a class logit. A channel's patch is the receptive
field of its strongest position; a class logit's is the receptive field of the feature-map
location that carries most of the logit (:func:`class_evidence`), so that both show the
part of the image the unit responded to, not the whole image.
"""

import dataclasses
import functools
import heapq
import itertools

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.errors import UserError
from keras_caltech.explain.model_layers import (find_layer, image_shape, is_image_batch,
                                                layer_paths, resolve_spatial_layer, tap_model)
from keras_caltech.explain.receptive_field import receptive_field

_CONV_TYPES = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D,
               keras.layers.Conv2DTranspose)


def conv_layer_names(model):
    """Returns the paths of every 2-D convolution layer, nested models included."""
    return [path for path in layer_paths(model) if isinstance(find_layer(model, path), _CONV_TYPES)]


def feature_maps(model, image, layer_names=None):
    """Returns the activations of layers for one image, from one forward pass.

    Args:
        model: a Functional or Sequential model.
        image: (h, w, 3) float RGB 0-255 at the model's input size.
        layer_names: 4-D layer paths; default: every convolution layer.

    Returns:
        dict from layer path to its activations, float32 (h', w', channels), in graph order.

    Raises:
        UserError: wrong image shape, or a layer that is missing or not 4-D.
    """
    names = conv_layer_names(model) if layer_names is None else list(layer_names)
    if not names:
        raise UserError(f"model {model.name!r} has no convolution layer; pass layer_names.")
    names = [resolve_spatial_layer(model, name) for name in names]
    image = np.asarray(image, dtype=np.float32)
    if image.shape != image_shape(model):
        raise UserError(f"feature maps take one image shaped {image_shape(model)} in RGB 0-255. "
                        f"Received shape {image.shape}")
    outputs = tap_model(model, names)(image[None], training=False)
    return {name: np.asarray(output[0]) for name, output in zip(names, outputs[:-1])}


@dataclasses.dataclass(frozen=True)
class Patch:
    """An image region where a unit responds strongly.

    Attributes:
        score: the unit's activation: a channel's value at ``position``, or the class
            logit of the whole image.
        image_index: position of the image in the scanned stream, from 0.
        position: (row, col) in the feature map: the channel's unit, or for a class
            logit the location with the most evidence for the class (see
            :func:`class_evidence`).
        box: (x0, y0, x1, y1), x1 and y1 exclusive, in input pixels, clipped to the image:
            the receptive field of ``position``.
        pixels: (y1 - y0, x1 - x0, 3) float32 RGB 0-255, the crop.
        evidence: for a class logit, the evidence at ``position`` (a share of the
            logit); None for a channel.
    """

    score: float
    image_index: int
    position: tuple
    box: tuple
    pixels: np.ndarray
    evidence: float | None = None


def class_evidence(model, images, class_index, layer_name=None):
    """Where a class logit's evidence lies in a feature map: gradient x activation, per location.

    The evidence of location (i, j) of the layer's activations ``A`` (h, w, channels) for
    the logit ``y`` is ``E_ij = sum_k A_ijk * dy/dA_ijk``: the share of the logit the
    location's activations carry. It is exact when the head after ``A`` is linear in it
    (global average pooling or Flatten, then Dense): ``sum_ij E_ij = y - bias``, and with
    global average pooling ``E`` is the class activation map (CAM) divided by h * w,
    as is Grad-CAM's map before its ReLU. Through further ReLU, max-pooling and
    batch-norm layers (piecewise linear) the shares still sum to the logit less the
    biases' part. Unlike Grad-CAM the gradient is not averaged over the map, so a
    Flatten head's position-specific weights count where they act.

    Args:
        model: a Functional or Sequential model, images 0-255 in, logits out.
        images: (batch, h, w, 3) float RGB 0-255.
        class_index: the class logit to explain.
        layer_name: a 4-D layer; default: the declared Grad-CAM layer, else the last 4-D layer.

    Returns:
        (logits float32 (batch,), evidence float32 (batch, h', w'), may be negative).

    Raises:
        UserError: the layer is missing, not 4-D or not on the path to the logits, the
            class is out of range, or the images are not shaped as the model's input.
    """
    expected = image_shape(model)
    evidence_of = _evidence_function(model, expected, resolve_spatial_layer(model, layer_name),
                                     class_index)
    return evidence_of(next(_image_batches(images, expected)))


def top_activating_patches(model, batches, *, layer_name=None, channel=None, class_index=None,
                           top_k=9, one_per_image=True):
    """Scans images for the top-k responses of one unit and crops their receptive fields.

    The unit is either a channel of a 4-D layer (``channel``) or a class logit
    (``class_index``). A channel's patch is the receptive field of its strongest
    position. A class logit sees the whole image, so the images are ranked by the logit
    and each is cropped to the receptive field of the location of ``layer_name`` that
    carries the most evidence for the class (:func:`class_evidence`): the part of the
    image that made the class neuron fire.

    Args:
        model: a Functional or Sequential model, images 0-255 in, logits out.
        batches: an iterable of image batches (batch, h, w, 3), RGB 0-255, or of
            (images, labels) pairs such as a ``tf.data.Dataset`` yields; one 4-D array
            is taken as a single batch.
        layer_name: the 4-D layer of ``channel``, or where a class logit's evidence is
            located; default: the declared Grad-CAM layer, else the last 4-D layer.
        channel: the channel to maximize.
        class_index: the class logit to maximize.
        top_k: patches to keep.
        one_per_image: channels: keep only each image's strongest position, so that the
            patches show different images. A class logit gives one patch per image.

    Returns:
        Up to ``top_k`` :class:`Patch` objects, strongest first.

    Raises:
        UserError: not exactly one of ``channel`` and ``class_index``, an index out of
            range, a layer that is missing or not 4-D, or a batch of the wrong shape.
    """
    if (channel is None) == (class_index is None):
        raise UserError("choose one unit: a channel of a layer (channel=...) or a class logit "
                        f"(class_index=...). Received channel={channel}, class_index={class_index}")
    expected = image_shape(model)
    layer_name = resolve_spatial_layer(model, layer_name)
    field = receptive_field(model, layer_name)
    if channel is None:
        responses_of = _evidence_function(model, expected, layer_name, class_index)
    else:
        responses_of = _channel_responses(model, expected, layer_name, channel)
    best = _StrongestPatches(top_k)
    seen = 0  # images scanned in earlier batches
    for images in _image_batches(batches, expected):
        responses = responses_of(images)  # (batch, h, w), or (logits (batch,), evidence (batch, h, w))
        for image_offset, score, position, evidence in _candidates(responses, top_k, one_per_image):
            # Cropped only if kept: most candidates of a long scan are not.
            best.offer(score, functools.partial(_crop_patch, images[image_offset], seen + image_offset,
                                                score, position, field, evidence))
        seen += len(images)
    return best.strongest_first()


def _check_unit(index, units, kind):
    """Raises UserError unless 0 <= index < units; ``kind`` is "classes" or "channels"."""
    if not 0 <= index < units:
        raise UserError(f"unit {index} is out of range: there are {units} "
                        f"({kind} 0 to {units - 1})")


def _channel_responses(model, expected, layer_name, channel):
    """A compiled function from images to one channel's map (batch, h, w) of ``layer_name``."""
    taps = tap_model(model, [layer_name])
    activations = taps.outputs[0]  # (batch, h, w, channels)
    _check_unit(channel, activations.shape[-1], "channels")
    responses_model = keras.Model(taps.inputs[0], activations)
    forward = tf.function(lambda images: responses_model(images, training=False),
                          input_signature=[tf.TensorSpec((None, *expected), tf.float32)])
    return lambda images: forward(images).numpy()[..., channel]


def _evidence_function(model, expected, layer_name, class_index):
    """A compiled function from images to (class logits (batch,), evidence (batch, h, w))."""
    taps = tap_model(model, [layer_name])  # outputs: [activations, logits]
    _check_unit(class_index, taps.outputs[-1].shape[-1], "classes")

    def evidence(images):
        with tf.GradientTape() as tape:
            activations, logits = taps(images, training=False)  # (b, h, w, c), (b, classes)
            scores = logits[:, class_index]  # (b,)
        # Images are independent at inference, so the gradient of the summed scores
        # holds each image's own gradient.
        gradients = tape.gradient(scores, activations)
        if gradients is None:
            raise UserError(f"the class scores of model {model.name!r} do not depend on layer "
                            f"{layer_name!r} (no gradient reaches it): pick a layer on the path "
                            f"to the logits.")
        return scores, tf.reduce_sum(gradients * activations, axis=-1)  # (b,), (b, h, w)

    compiled = tf.function(evidence, autograph=False,
                           input_signature=[tf.TensorSpec((None, *expected), tf.float32)])
    compiled.get_concrete_function()  # a layer off the path to the logits fails now
    return lambda images: tuple(tensor.numpy() for tensor in compiled(images))


def _image_batches(batches, expected):
    """Yields float32 image batches (batch, *expected) from arrays or (images, labels) pairs.

    Raises:
        UserError: a batch of another shape.
    """
    if isinstance(batches, np.ndarray) or tf.is_tensor(batches):
        batches = [batches]  # one 4-D array: a single batch
    for batch in batches:
        images = np.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch, np.float32)
        if not is_image_batch(images, expected):
            raise UserError(f"patch scanning takes batches shaped (batch, "
                            f"{', '.join(map(str, expected))}). Received shape {images.shape}")
        yield images


def _crop_patch(image, image_index, score, position, field, evidence=None):
    """The :class:`Patch` of ``image`` under the unit at ``position`` of a layer with ``field``."""
    box = field.box(*position, image.shape[:2])
    return Patch(score=score, image_index=image_index, position=position, box=box,
                 pixels=image[box[1]:box[3], box[0]:box[2]].copy(), evidence=evidence)


class _StrongestPatches:
    """The ``top_k`` strongest patches offered so far.

    A min-heap of (score, -arrival, Patch): the weakest kept patch is on top, and on
    equal scores the patch offered first wins.
    """

    def __init__(self, top_k):
        self.top_k = top_k
        self._heap = []
        self._arrivals = itertools.count()

    def offer(self, score, make_patch):
        """Keeps the patch ``make_patch()`` builds if it is among the strongest (built only then)."""
        entry = (score, -next(self._arrivals))
        if len(self._heap) == self.top_k and entry <= self._heap[0][:2]:
            return
        if len(self._heap) < self.top_k:
            heapq.heappush(self._heap, (*entry, make_patch()))
        else:
            heapq.heapreplace(self._heap, (*entry, make_patch()))

    def strongest_first(self):
        """The kept patches, strongest first."""
        return [patch for _, _, patch in sorted(self._heap, key=lambda item: item[:2], reverse=True)]


def _candidates(responses, top_k, one_per_image):
    """Yields (image offset in batch, score, (row, col), evidence or None) of a batch's strongest units.

    ``responses``: a channel's maps (batch, h, w), or a class's (logits (batch,),
    evidence (batch, h, w)): images ranked by the logit, each at its location of most evidence.
    """
    if isinstance(responses, tuple):
        scores, evidence = responses
        flat = evidence.reshape(len(evidence), -1)
        for offset in np.argsort(-scores, kind="stable")[:top_k]:
            location = int(flat[offset].argmax())
            yield (int(offset), float(scores[offset]), divmod(location, evidence.shape[2]),
                   float(flat[offset, location]))
        return
    batch, height, width = responses.shape
    if one_per_image:
        flat = responses.reshape(batch, -1)
        positions = flat.argmax(axis=1)
        for offset in np.argsort(-flat.max(axis=1), kind="stable")[:top_k]:
            position = int(positions[offset])
            yield int(offset), float(flat[offset, position]), divmod(position, width), None
        return
    flat = responses.reshape(-1)
    for flat_index in np.argsort(-flat, kind="stable")[:top_k]:
        offset, rest = divmod(int(flat_index), height * width)
        yield offset, float(flat[flat_index]), divmod(rest, width), None
