"""Figures of explanations: the one place that draws.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch, no display needed). Heatmaps are coloured with OpenCV's JET colormap
and blended on the original, un-normalized image.
"""

import math
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _as_uint8(image):
    """An RGB 0-255 float image as uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def colorize(heatmap, size):
    """Colours a heatmap with OpenCV's JET colormap.

    Args:
        heatmap: (h, w) float in [0, 1], any resolution.
        size: (height, width) to resize to (bilinear).

    Returns:
        (height, width, 3) uint8 RGB.
    """
    resized = cv2.resize(np.asarray(heatmap, np.float32), (size[1], size[0]),
                         interpolation=cv2.INTER_LINEAR)
    levels = _as_uint8(np.clip(resized, 0.0, 1.0) * 255.0)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image, heatmap, alpha=0.4):
    """Blends a JET-coloured heatmap on an image.

    Args:
        image: (h, w, 3) RGB 0-255, as the model takes it (not normalized).
        heatmap: (h', w') float in [0, 1]; resized to the image.
        alpha: weight of the heatmap colour.

    Returns:
        (h, w, 3) uint8 RGB.
    """
    image = _as_uint8(image)
    return cv2.addWeighted(image, 1.0 - alpha, colorize(heatmap, image.shape[:2]), alpha, 0.0)


def prediction_title(probabilities, class_index, class_names=None, method="Grad-CAM"):
    """A title naming the predicted class and the explained one, with probabilities.

    Args:
        probabilities: (num_classes,) softmax output for the image.
        class_index: the explained class.
        class_names: optional list of names; indices are shown without it.
        method: the explanation method's name.
    """
    def name(index):
        return class_names[index] if class_names else f"class {index}"

    predicted = int(np.argmax(probabilities))
    title = f"predicted {name(predicted)} ({probabilities[predicted]:.1%})"
    if class_index != predicted:
        title += f"; {method} for {name(class_index)} ({probabilities[class_index]:.1%})"
    else:
        title += f"; {method}"
    return title


def _new_figure(width, height):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _show(axes, picture, label=None):
    axes.imshow(picture)
    axes.set_axis_off()
    if label:
        axes.set_title(label, fontsize=9)


def explanation_figure(image, heatmap, title, empty=False):
    """Original | heatmap | overlay, under one title.

    Args:
        image: (h, w, 3) RGB 0-255.
        heatmap: (h', w') float in [0, 1].
        title: e.g. from :func:`prediction_title`.
        empty: the map is empty (the image argues against the class); said on the figure.

    Returns:
        a matplotlib Figure.
    """
    figure = _new_figure(9, 3.4)
    panels = figure.subplots(1, 3)
    _show(panels[0], _as_uint8(image), "image")
    heat_label = "empty: evidence argues against the class" if empty else "heatmap"
    _show(panels[1], colorize(heatmap, np.shape(image)[:2]), heat_label)
    _show(panels[2], overlay(image, heatmap), "overlay")
    figure.suptitle(title, fontsize=10)
    return figure


def gradient_image(gradients):
    """Maps image gradients to a displayable RGB picture in [0, 1].

    Centred on 0.5 grey and scaled so that +-3 standard deviations fill the range.

    Args:
        gradients: (h, w, 3) float.
    """
    gradients = np.asarray(gradients, np.float32)
    spread = gradients.std()
    if spread == 0:
        return np.full(gradients.shape, 0.5, np.float32)
    return np.clip(0.5 + (gradients - gradients.mean()) / (6.0 * spread), 0.0, 1.0)


def gradient_figure(image, gradients, title):
    """Original | gradient picture (guided backpropagation, guided Grad-CAM)."""
    figure = _new_figure(6, 3.4)
    panels = figure.subplots(1, 2)
    _show(panels[0], _as_uint8(image), "image")
    _show(panels[1], gradient_image(gradients), "gradient")
    figure.suptitle(title, fontsize=10)
    return figure


def _grid(count):
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def feature_map_figure(activations, layer_name, max_channels=64):
    """A grid with one panel per channel of one layer's activations.

    Args:
        activations: (h, w, channels) float.
        layer_name: shown in the title.
        max_channels: channels shown, the first ones.
    """
    shown = min(activations.shape[-1], max_channels)
    rows, columns = _grid(shown)
    figure = _new_figure(1.2 * columns + 0.5, 1.2 * rows + 0.6)
    panels = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for channel, axes in enumerate(panels):
        axes.set_axis_off()
        if channel < shown:
            axes.imshow(activations[..., channel], cmap="viridis")
            axes.set_title(str(channel), fontsize=6)
    figure.suptitle(f"{layer_name}: {shown} of {activations.shape[-1]} channels, "
                    f"{activations.shape[0]}x{activations.shape[1]}", fontsize=9)
    return figure


def patches_figure(patches, title):
    """A grid of maximally activating patches (see ``views.top_activating_patches``)."""
    rows, columns = _grid(max(len(patches), 1))
    figure = _new_figure(1.6 * columns + 0.5, 1.7 * rows + 0.6)
    panels = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes in panels:
        axes.set_axis_off()
    for patch, axes in zip(patches, panels):
        _show(axes, _as_uint8(patch.pixels), f"#{patch.image_index}: {patch.score:.3g}")
    figure.suptitle(title, fontsize=9)
    return figure


def save_figure(figure, path):
    """Writes a figure (PNG by the suffix) and returns its path, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
