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


def _new_figure(width, height, layout="constrained"):
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _grid_figure(rows, columns, cell):
    """A figure of rows x columns image panels, all axes hidden.

    A fixed layout: the constrained solver takes seconds on 64 panels.
    """
    figure = _new_figure(cell * columns, cell * rows + 0.5, layout=None)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / (cell * rows + 0.5),
                           wspace=0.05, hspace=0.25)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in panels:
        axes.set_axis_off()
    return figure, panels


def _show(axes, picture, label=None, fontsize=9):
    axes.imshow(picture)
    axes.set_axis_off()
    if label:
        axes.set_title(label, fontsize=fontsize)


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
    """The channels of one layer's activations tiled in a grid, on one colour scale.

    One shared scale, so dead channels look dark; the tiles are one picture (one
    ``imshow``), because 64 separate panels take seconds to lay out.

    Args:
        activations: (h, w, channels) float.
        layer_name: shown in the title.
        max_channels: channels shown, the first ones, row by row.
    """
    height, width, channels = activations.shape
    shown = min(channels, max_channels)
    rows, columns = _grid(shown)
    gap = max(1, height // 8)
    tiles = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap), np.nan, np.float32)
    for channel in range(shown):
        row, column = divmod(channel, columns)
        tiles[row * (height + gap):row * (height + gap) + height,
              column * (width + gap):column * (width + gap) + width] = activations[..., channel]
    figure = _new_figure(0.3 + 0.9 * columns, 0.6 + 0.9 * rows)
    axes = figure.subplots()
    picture = axes.imshow(tiles, cmap="viridis", interpolation="nearest")
    axes.set_axis_off()
    figure.colorbar(picture, ax=axes, shrink=0.8)
    figure.suptitle(f"{layer_name}: channels 0-{shown - 1} of {channels} (row by row), "
                    f"{height}x{width}", fontsize=9)
    return figure


def patches_figure(patches, title):
    """A grid of maximally activating patches (see ``views.top_activating_patches``)."""
    figure, panels = _grid_figure(*_grid(max(len(patches), 1)), cell=1.6)
    for patch, axes in zip(patches, panels):
        _show(axes, _as_uint8(patch.pixels), f"#{patch.image_index}: {patch.score:.3g}")
    figure.suptitle(title, fontsize=9)
    return figure


def image_grid(rows, title, cell=1.8):
    """Rows of labelled pictures in one figure: the galleries of a run's explanations.

    Args:
        rows: a list of rows, each a list of (picture, label): picture (h, w, 3) RGB
            0-255 (uint8 or float), label a short text of up to two lines.
        title: above the grid.
        cell: inches per panel side.

    Returns:
        a matplotlib Figure; rows shorter than the longest leave blank panels.
    """
    columns = max(len(row) for row in rows)
    label_space = 0.45  # inches above each panel for a two-line label
    title_space = 0.4  # inches for the figure title, above the first row's labels
    height = len(rows) * (cell + label_space) + title_space
    figure = _new_figure(cell * columns, height, layout=None)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01,
                           top=1 - (title_space + label_space) / height, wspace=0.05,
                           hspace=label_space / cell)
    panels = figure.subplots(len(rows), columns, squeeze=False)
    for row, row_panels in zip(rows, panels):
        for axes in row_panels:
            axes.set_axis_off()
        for (picture, label), axes in zip(row, row_panels):
            _show(axes, _as_uint8(picture), label, fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def save_figure(figure, path):
    """Writes a figure (PNG by the suffix) and returns its path, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
