"""What the network computes: feature maps of one image, and the image patches that
most excite one unit across many images (Zeiler & Fergus 2014).
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
        score: the unit's activation (or the class logit).
        image_index: position of the image in the scanned stream, from 0.
        position: (row, col) of the unit in its feature map; None for a class logit,
            whose receptive field is the whole image.
        box: (x0, y0, x1, y1), x1 and y1 exclusive, in input pixels, clipped to the image.
        pixels: (y1 - y0, x1 - x0, 3) float32 RGB 0-255, the crop.
    """

    score: float
    image_index: int
    position: tuple | None
    box: tuple
    pixels: np.ndarray


def top_activating_patches(model, batches, *, layer_name=None, channel=None, class_index=None,
                           top_k=9, one_per_image=True):
    """Scans images for the top-k activations of one unit and crops their receptive fields.

    The unit is either a channel of a 4-D layer (``channel``, with ``layer_name`` or the
    default layer) or a class logit (``class_index``).

    Args:
        model: a Functional or Sequential model, images 0-255 in, logits out.
        batches: an iterable of image batches (batch, h, w, 3), RGB 0-255, or of
            (images, labels) pairs such as a ``tf.data.Dataset`` yields; one 4-D array
            is taken as a single batch.
        layer_name: the 4-D layer of ``channel``.
        channel: the channel to maximize.
        class_index: the class logit to maximize.
        top_k: patches to keep.
        one_per_image: keep only each image's strongest position, so that the patches
            show different images.

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
    responses_of, field = _unit_responses(model, expected, layer_name, channel, class_index)
    best = _StrongestPatches(top_k)
    seen = 0  # images scanned in earlier batches
    for images in _image_batches(batches, expected):
        responses = responses_of(images)  # (batch, h, w) for a channel, (batch,) for a logit
        for image_offset, score, position in _candidates(responses, top_k, one_per_image):
            # Cropped only if kept: most candidates of a long scan are not.
            best.offer(score, functools.partial(_crop_patch, images[image_offset], seen + image_offset,
                                                score, position, field))
        seen += len(images)
    return best.strongest_first()


def _unit_responses(model, expected, layer_name, channel, class_index):
    """A compiled function from images to one unit's responses, and the unit's receptive field.

    Returns:
        (``responses_of(images) -> np.ndarray`` (batch, h, w) for a channel or (batch,)
        for a class logit, the :class:`ReceptiveField` of the channel's layer or None
        for a logit, which sees the whole image).

    Raises:
        UserError: the layer is missing or not 4-D, or the unit is out of range.
    """
    field = None
    if channel is not None:
        layer_name = resolve_spatial_layer(model, layer_name)
        field = receptive_field(model, layer_name)
    taps = tap_model(model, [] if channel is None else [layer_name])
    unit_output = taps.outputs[0]  # (batch, h, w, channels) or (batch, classes)
    index = class_index if channel is None else channel
    units = unit_output.shape[-1]
    if not 0 <= index < units:
        raise UserError(f"unit {index} is out of range: there are {units} "
                        f"({'classes' if channel is None else 'channels'} 0 to {units - 1})")
    responses_model = keras.Model(taps.inputs[0], unit_output)
    forward = tf.function(lambda images: responses_model(images, training=False),
                          input_signature=[tf.TensorSpec((None, *expected), tf.float32)])
    return (lambda images: forward(images).numpy()[..., index]), field


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


def _crop_patch(image, image_index, score, position, field):
    """The :class:`Patch` of ``image`` under a unit at ``position`` (None: the whole image)."""
    if position is None:
        box = (0, 0, image.shape[1], image.shape[0])
    else:
        box = field.box(*position, image.shape[:2])
    return Patch(score=score, image_index=image_index, position=position, box=box,
                 pixels=image[box[1]:box[3], box[0]:box[2]].copy())


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
    """Yields (image offset in batch, score, (row, col) or None) of a batch's strongest units."""
    if responses.ndim == 1:  # class logits: one score per image
        for offset in np.argsort(-responses, kind="stable")[:top_k]:
            yield int(offset), float(responses[offset]), None
        return
    batch, height, width = responses.shape
    if one_per_image:
        flat = responses.reshape(batch, -1)
        positions = flat.argmax(axis=1)
        for offset in np.argsort(-flat.max(axis=1), kind="stable")[:top_k]:
            position = int(positions[offset])
            yield int(offset), float(flat[offset, position]), divmod(position, width)
        return
    flat = responses.reshape(-1)
    for flat_index in np.argsort(-flat, kind="stable")[:top_k]:
        offset, rest = divmod(int(flat_index), height * width)
        yield offset, float(flat[flat_index]), divmod(rest, width)
