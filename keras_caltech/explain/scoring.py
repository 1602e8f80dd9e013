"""Scores of explanations: do heatmaps point at the object, and does the model need
the pixels they highlight?

Localisation needs a ground-truth box ``[x0, y0, x1, y1]`` in pixel coordinates of the
image the heatmap explains (x to the right, y down, pixel indices as coordinates).
Heatmaps of any resolution are first resized bilinearly to that image. Faithfulness
(deletion / insertion) needs only the model. All functions are NumPy plus the model's
forward pass, so ``explain.py --evaluate`` can call them on any explainer's maps.
"""

import dataclasses

import cv2
import numpy as np
import tensorflow as tf

from keras_caltech.errors import UserError
from keras_caltech.explain.gradcam import upsample


def _check_box(box, image_size):
    x0, y0, x1, y1 = (float(value) for value in box)
    if not (x0 <= x1 and y0 <= y1):
        raise UserError(f"a box is [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1. Received: {list(box)}")
    if image_size is not None and (x1 < 0 or y1 < 0 or x0 > image_size[1] or y0 > image_size[0]):
        raise UserError(f"box {list(box)} lies outside the image of size "
                        f"(height, width)={tuple(image_size)}")
    return x0, y0, x1, y1


def _at_image_size(heatmap, image_size):
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim != 2:
        raise UserError(f"a heatmap is 2-D (h, w). Received shape {heatmap.shape}")
    heatmap = np.clip(heatmap, 0.0, None)
    if image_size is None or tuple(image_size) == heatmap.shape:
        return heatmap
    peak = heatmap.max()  # the scores are scale-free; upsample works on [0, 1]
    return upsample(heatmap / peak if peak > 0 else heatmap, tuple(image_size))


def _inside(x, y, box, tolerance=0.0):
    x0, y0, x1, y1 = box
    return np.hypot(max(x0 - x, 0.0, x - x1), max(y0 - y, 0.0, y - y1)) <= tolerance


def pointing_game(heatmap, box, image_size=None, tolerance=15):
    """Whether the heatmap's maximum falls in the box (Zhang et al. 2016).

    Args:
        heatmap: (h, w) float >= 0.
        box: [x0, y0, x1, y1] in pixels of the explained image.
        image_size: (height, width) of that image; None if the heatmap already has it.
        tolerance: pixels the maximum may lie outside the box and still count.

    Returns:
        True for a hit. An empty (all-zero) heatmap points nowhere: a miss.
    """
    heatmap = _at_image_size(heatmap, image_size)
    box = _check_box(box, heatmap.shape)
    if heatmap.max() <= 0:
        return False
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)  # first maximum on ties
    return bool(_inside(x, y, box, tolerance))


def centre_point_baseline(box, image_size, tolerance=15):
    """The pointing game of a map that always points at the image centre."""
    box = _check_box(box, image_size)
    return bool(_inside((image_size[1] - 1) / 2, (image_size[0] - 1) / 2, box, tolerance))


def energy_in_box(heatmap, box, image_size=None):
    """Share of the heatmap's mass inside the box (energy-based pointing game).

    Args:
        heatmap, box, image_size: as for :func:`pointing_game`.

    Returns:
        float in [0, 1]; 0 for an empty heatmap.
    """
    heatmap = _at_image_size(heatmap, image_size)
    x0, y0, x1, y1 = _check_box(box, heatmap.shape)
    total = heatmap.sum()
    if total <= 0:
        return 0.0
    rows, columns = np.arange(heatmap.shape[0]), np.arange(heatmap.shape[1])
    inside = np.outer((rows >= y0) & (rows <= y1), (columns >= x0) & (columns <= x1))
    return float(heatmap[inside].sum() / total)


@dataclasses.dataclass(frozen=True)
class Curve:
    """Class probability as pixels are deleted or inserted.

    Attributes:
        fractions: (steps + 1,) share of pixels changed, 0 to 1.
        probabilities: (steps + 1,) probability of the class at each step.
        auc: area under the curve (trapezoid rule).
    """

    fractions: np.ndarray
    probabilities: np.ndarray
    auc: float


def _class_probabilities(model, frames, class_index, batch_size):
    """Softmax probability of ``class_index`` for a stack of images."""
    probabilities = []
    for start in range(0, len(frames), batch_size):
        logits = model(tf.constant(frames[start:start + batch_size]), training=False)
        probabilities.append(tf.nn.softmax(logits)[:, class_index].numpy())
    return np.concatenate(probabilities)


def _salience_curve(model, start_image, end_image, heatmap, class_index, steps, batch_size):
    """Moves pixels from ``start_image`` to ``end_image``, most salient first."""
    height, width = start_image.shape[:2]
    heatmap = _at_image_size(heatmap, (height, width)).ravel()
    order = np.argsort(-heatmap, kind="stable")  # most salient first; ties in raster order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)  # rank[pixel] = when the pixel changes
    counts = np.rint(np.linspace(0, order.size, steps + 1)).astype(int)
    frames = []
    for count in counts:
        changed = (rank < count).reshape(height, width, 1)
        frames.append(np.where(changed, end_image, start_image))
    frames = np.stack(frames).astype(np.float32)  # (steps + 1, h, w, 3)
    probabilities = _class_probabilities(model, frames, class_index, batch_size)
    fractions = counts / order.size
    return Curve(fractions=fractions, probabilities=probabilities,
                 auc=float(np.trapezoid(probabilities, fractions)))


def blur(image, sigma=None):
    """Gaussian blur of an RGB 0-255 image; default sigma is the image side / 45 (5 px at 224)."""
    image = np.asarray(image, np.float32)
    sigma = max(image.shape[:2]) / 45.0 if sigma is None else sigma
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)


def deletion_curve(model, image, heatmap, class_index, steps=32, batch_size=32):
    """Class probability as the most salient pixels are set to black (RISE, Petsiuk et al.
    2018); a faithful map makes it fall fast: lower AUC is better.

    Args:
        model: images 0-255 in, logits out.
        image: (h, w, 3) RGB 0-255 at the model's input size.
        heatmap: (h', w') saliency, any resolution.
        class_index: the explained class.
        steps: number of deletion steps (the model sees ``steps + 1`` images).
        batch_size: images per forward pass.
    """
    image = np.asarray(image, np.float32)
    return _salience_curve(model, image, np.zeros_like(image), heatmap, class_index, steps, batch_size)


def insertion_curve(model, image, heatmap, class_index, steps=32, batch_size=32, sigma=None):
    """Class probability as the most salient pixels are put back into a blurred copy of
    the image; a faithful map makes it rise fast: higher AUC is better.

    Args: as for :func:`deletion_curve`; ``sigma`` of the blur (see :func:`blur`).
    """
    image = np.asarray(image, np.float32)
    return _salience_curve(model, blur(image, sigma), image, heatmap, class_index, steps, batch_size)


def random_heatmap(shape, seed=0):
    """A uniform random saliency map: the chance baseline of deletion and insertion."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion AUCs of a heatmap and of a random map (the baseline)."""

    deletion: float
    insertion: float
    random_deletion: float
    random_insertion: float


def faithfulness(model, image, heatmap, class_index, steps=32, batch_size=32, seed=0):
    """Deletion and insertion AUCs for ``heatmap`` and, as a baseline, a random map.

    Args: as for :func:`deletion_curve`; ``seed`` of the random map.
    """
    baseline = random_heatmap(np.shape(image)[:2], seed)
    return Faithfulness(
        deletion=deletion_curve(model, image, heatmap, class_index, steps, batch_size).auc,
        insertion=insertion_curve(model, image, heatmap, class_index, steps, batch_size).auc,
        random_deletion=deletion_curve(model, image, baseline, class_index, steps, batch_size).auc,
        random_insertion=insertion_curve(model, image, baseline, class_index, steps, batch_size).auc)


def make_mosaic(images):
    """Tiles four images 2x2 into one image of the same size (each tile at half size).

    Args:
        images: (4, h, w, 3) RGB 0-255, order top-left, top-right, bottom-left, bottom-right.

    Returns:
        (h, w, 3) float32 mosaic.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) != 4:
        raise UserError(f"a mosaic takes 4 images (4, h, w, 3). Received shape {images.shape}")
    height, width = images.shape[1:3]
    rows, columns = [0, height // 2, height], [0, width // 2, width]
    mosaic = np.zeros(images.shape[1:], np.float32)
    for tile, image in enumerate(images):
        row, column = divmod(tile, 2)
        size = (columns[column + 1] - columns[column], rows[row + 1] - rows[row])  # cv2: (w, h)
        mosaic[rows[row]:rows[row + 1], columns[column]:columns[column + 1]] = cv2.resize(
            image, size, interpolation=cv2.INTER_AREA)
    return mosaic


def grid_pointing_game(explain, images, class_indices):
    """Grid pointing game (Böhle et al. 2021): in a 2x2 mosaic of images of four
    classes, each class's heatmap must peak in that class's tile.

    Args:
        explain: ``explain(images, class_indices)`` returning a result with
            ``.heatmaps`` (batch, h, w), e.g. a ``GradCam``, or the array itself.
        images: (4, h, w, 3) RGB 0-255 at the model's input size, one per class.
        class_indices: 4 different classes, one per image.

    Returns:
        (4,) bool: hit per tile. Empty heatmaps miss.
    """
    class_indices = [int(index) for index in class_indices]
    if len(class_indices) != 4 or len(set(class_indices)) != 4:
        raise UserError(f"the grid pointing game needs 4 images of 4 different classes. "
                        f"Received class indices {class_indices}")
    mosaic = make_mosaic(images)
    result = explain(np.repeat(mosaic[None], 4, axis=0), class_indices)
    heatmaps = upsample(getattr(result, "heatmaps", result), mosaic.shape[:2])  # (4, h, w)
    height, width = mosaic.shape[:2]
    hits = []
    for tile, heatmap in enumerate(heatmaps):
        if heatmap.max() <= 0:
            hits.append(False)
            continue
        y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        hits.append(divmod(tile, 2) == (int(y >= height // 2), int(x >= width // 2)))
    return np.array(hits)
