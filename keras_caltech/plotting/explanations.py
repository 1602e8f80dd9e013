"""The explanations' figures, and the image helpers the galleries share with them.

Heatmaps are coloured with OpenCV's JET colormap and blended on the original,
un-normalized image. The figures are returned as matplotlib Figures, which
:func:`~keras_caltech.plotting.figures.save_figure` writes.
"""

import math

import cv2
import numpy as np
from matplotlib.patches import Rectangle

from keras_caltech.plotting.figures import new_figure


def _as_uint8(image):
    """An RGB 0-255 float image as uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


_DPI = 100  # save_figure's resolution: pixels per inch of a figure
_PANEL_PIXELS = 600  # longest side kept for a picture in a 3-inch panel (twice its pixels)


def downscale(picture, longest_side=None):
    """Shrinks a picture whose longest side exceeds ``longest_side``; smaller ones are returned as they are.

    Area averaging (``cv2.INTER_AREA``) keeps thin structures that matplotlib's own
    resampling of a 3000 px photo into a 300 px panel would alias, and plotting the
    small copy is faster. Shrinking a large original as soon as it is decoded also
    spares what is computed at its size before plotting (a gradient stretched onto a
    50-megapixel original is 600 MB of float32).

    Args:
        picture: (h, w, 3) or (h, w), uint8 or float.
        longest_side: pixels; default the most a figure panel shows.

    Returns:
        The picture, of the same dtype, its aspect ratio kept.
    """
    longest_side = longest_side or _PANEL_PIXELS
    height, width = np.shape(picture)[:2]
    if max(height, width) <= longest_side:
        return picture
    scale = longest_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(np.asarray(picture), size, interpolation=cv2.INTER_AREA)


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


def _grid_figure(rows, columns, cell, title_lines=1):
    """A figure of rows x columns image panels, all axes hidden, room above for a title.

    A fixed layout: the constrained solver takes seconds on 64 panels.
    """
    top_space = 0.35 + 0.17 * title_lines  # inches: the title, then the first row's labels
    figure = new_figure(cell * columns, cell * rows + top_space, layout=None)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01,
                           top=1 - top_space / (cell * rows + top_space), wspace=0.05, hspace=0.25)
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
    image = downscale(_as_uint8(image), _PANEL_PIXELS)  # the heatmap is resized to it
    figure = new_figure(9, 3.4)
    panels = figure.subplots(1, 3)
    _show(panels[0], image, "image")
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


def gradient_figure(image, gradients, title, box=None):
    """Original | gradient picture (guided backpropagation, guided Grad-CAM).

    Args:
        image: (h, w, 3) RGB 0-255.
        gradients: (h, w, 3) float, on the image's pixels.
        title: above both panels.
        box: optional (x0, y0, x1, y1), x1 and y1 exclusive, in the image's pixels (e.g.
            the receptive field of the neuron followed back): outlined on both panels.

    Returns:
        a matplotlib Figure.
    """
    picture = gradient_image(gradients)  # scaled on every pixel, then shrunk
    height = np.shape(image)[0]
    image, picture = downscale(_as_uint8(image), _PANEL_PIXELS), downscale(picture, _PANEL_PIXELS)
    figure = new_figure(6, 3.4)
    panels = figure.subplots(1, 2)
    _show(panels[0], image, "image")
    _show(panels[1], picture, "gradient" if box is None else "gradient (box: receptive field)")
    if box is not None:
        scale = image.shape[0] / height
        x0, y0, x1, y1 = (value * scale for value in box)
        for axes in panels:  # pixel i spans i - 0.5 to i + 0.5 in imshow coordinates
            axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                     edgecolor="lime", linewidth=1.5))
    figure.suptitle(title, fontsize=9, wrap=True)
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
    figure = new_figure(0.3 + 0.9 * columns, 0.6 + 0.9 * rows)
    axes = figure.subplots()
    picture = axes.imshow(tiles, cmap="viridis", interpolation="nearest")
    axes.set_axis_off()
    figure.colorbar(picture, ax=axes, shrink=0.8)
    figure.suptitle(f"{layer_name}: channels 0-{shown - 1} of {channels} (row by row), "
                    f"{height}x{width}", fontsize=9)
    return figure


def patches_figure(patches, title):
    """A grid of maximally activating patches (see ``views.top_activating_patches``).

    Each panel: the crop, labelled ``#image index: score``; ``title`` may have several lines.
    """
    figure, panels = _grid_figure(*_grid(max(len(patches), 1)), cell=1.6,
                                  title_lines=title.count("\n") + 1)
    for patch, axes in zip(patches, panels):
        _show(axes, _as_uint8(patch.pixels), f"#{patch.image_index}: {patch.score:.3g}")
    figure.suptitle(title, fontsize=9)
    return figure


def image_grid(rows, title, cell=1.8, group=1):
    """Rows of labelled pictures in one figure: the galleries of a run's explanations.

    Args:
        rows: a list of rows, each a list of (picture, label): picture (h, w, 3) RGB
            0-255 (uint8 or float), label a short text of up to two lines.
        title: above the grid.
        cell: inches per panel side.
        group: panels that belong together (e.g. 3: image, heatmap, overlay of one
            image); a gap of a fifth of a panel separates the groups of a row.

    Returns:
        a matplotlib Figure; rows shorter than the longest leave blank panels.
    """
    columns = max(len(row) for row in rows)
    ratios = []  # panel columns 1.0, spacer columns between groups 0.2
    for column in range(columns):
        ratios += [0.2, 1.0] if group > 1 and column and column % group == 0 else [1.0]
    gaps = len(ratios) - columns
    label_space = 0.45  # inches above each panel for a two-line label
    title_space = 0.4  # inches for the figure title, above the first row's labels
    height = len(rows) * (cell + label_space) + title_space
    figure = new_figure(cell * (columns + 0.2 * gaps), height, layout=None)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01,
                           top=1 - (title_space + label_space) / height, wspace=0.05,
                           hspace=label_space / cell)
    panels = figure.subplots(len(rows), len(ratios), squeeze=False,
                             gridspec_kw={"width_ratios": ratios})
    side = round(cell * _DPI)  # a panel's pixels: larger pictures are shrunk to it
    for row, row_panels in zip(rows, panels):
        for axes in row_panels:
            axes.set_axis_off()
        picture_panels = [axes for axes, ratio in zip(row_panels, ratios) if ratio == 1.0]
        for (picture, label), axes in zip(row, picture_panels):
            _show(axes, downscale(_as_uint8(picture), side), label, fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure
