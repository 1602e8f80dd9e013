"""Training curves and the evaluation's figures.

Each ``plot_*`` function writes a PNG (through :func:`~keras_caltech.plotting.figures.save_figure`)
and returns its path.
"""

import csv

import numpy as np
from matplotlib.colors import PowerNorm

from keras_caltech.plotting.figures import new_figure, save_figure


def plot_curves(history_csv, output_path):
    """Draws loss and accuracy per epoch, training vs validation, from Keras' CSVLogger file."""
    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure = new_figure(10, 4, layout=None)
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for axis, key, title in ((loss_axis, "loss", "Loss"), (accuracy_axis, "accuracy", "Top-1 accuracy")):
        axis.plot(epochs, [float(row[key]) for row in rows], marker="o", label="train")
        if f"val_{key}" in rows[0]:
            axis.plot(epochs, [float(row[f"val_{key}"]) for row in rows], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return save_figure(figure, output_path)


# Confusion matrices: per-cell counts only while they stay legible, class names while
# the tick labels do not overlap; beyond that a colour bar and class indices.
_COUNTS_MAX_CLASSES = 20
_NAMES_MAX_CLASSES = 50


def plot_confusion_matrix(matrix, class_names, output_path, *, title="Confusion matrix"):
    """Draws a row-normalised confusion matrix (each row: where one true class's images went).

    Readable from 2 to a few hundred classes: counts in the cells up to 20 classes, class
    names on the axes up to 50, above that class indices. The colour scale is a square
    root (PowerNorm 0.5), so that the few-percent confusions that matter show up beside
    the bright diagonal.

    Args:
        matrix: int array (classes, classes) of counts, rows true, columns predicted.
        class_names: names in label order.
        output_path: PNG to write.
        title: figure title.

    Returns:
        ``output_path``.
    """
    matrix = np.asarray(matrix)
    num_classes = len(class_names)
    support = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)  # rows sum to 1
    side = min(14.0, max(5.0, 3.0 + 0.4 * num_classes)) if num_classes <= _NAMES_MAX_CLASSES else 12.0
    figure = new_figure(side + 1.5, side, layout=None)
    axis = figure.subplots()
    shown = axis.imshow(rates, cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0),
                        interpolation="nearest")
    colorbar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
    colorbar.set_label("share of the true class (square-root scale)")
    if num_classes <= _NAMES_MAX_CLASSES:
        axis.set_xticks(range(num_classes), class_names, rotation=90, fontsize=8)
        axis.set_yticks(range(num_classes), class_names, fontsize=8)
    else:
        step = next(step for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, num_classes)
                    if step >= num_classes / 12)  # about a dozen round-numbered ticks
        ticks = list(range(0, num_classes, step))
        axis.set_xticks(ticks, [str(tick) for tick in ticks], fontsize=8)
        axis.set_yticks(ticks, [str(tick) for tick in ticks], fontsize=8)
        # Faint lines from the ticks: a bright cell far from both axes can be read off.
        axis.grid(color="white", alpha=0.15, linewidth=0.5)
    if num_classes <= _COUNTS_MAX_CLASSES:
        for true_index in range(num_classes):
            for predicted_index in range(num_classes):
                count = int(matrix[true_index, predicted_index])
                if count:
                    bright = rates[true_index, predicted_index] > 0.5  # viridis turns yellow
                    axis.text(predicted_index, true_index, str(count), ha="center", va="center", fontsize=8,
                              color="black" if bright else "white")
    index_note = "" if num_classes <= _NAMES_MAX_CLASSES else " (label index, from 0)"
    axis.set_xlabel(f"predicted class{index_note}")
    axis.set_ylabel(f"true class{index_note}")
    axis.set_title(title)
    figure.tight_layout()
    return save_figure(figure, output_path)


def plot_per_class_accuracy(per_class_accuracy, output_path, *, worst=25, title="Worst classes"):
    """Draws the accuracies of the ``worst`` classes as named horizontal bars, worst on top.

    With more classes than ``worst`` (Caltech-256's 257), a strip below shows every
    class's accuracy, worst to best, the named ones in red, and names the best three:
    the shape of the whole distribution, which the worst few alone do not give.

    Args:
        per_class_accuracy: class name -> accuracy in [0, 1], or None for a class with
            no test images (left out).
        output_path: PNG to write.
        worst: how many classes to name.
        title: figure title.

    Returns:
        ``output_path``.
    """
    present = {name: value for name, value in per_class_accuracy.items() if value is not None}
    ranked = sorted(present.items(), key=lambda item: (item[1], item[0]))  # worst first
    shown = ranked[:worst]
    mean = sum(present.values()) / max(1, len(present))
    bars_height = 0.6 + 0.3 * len(shown)  # inches
    if len(ranked) > len(shown):
        figure = new_figure(8, bars_height + 2.6, layout=None)
        axis, strip = figure.subplots(2, 1, gridspec_kw={"height_ratios": [bars_height, 1.8]})
        _accuracy_strip(strip, ranked, len(shown), mean)
    else:
        figure = new_figure(8, bars_height + 0.4, layout=None)
        axis = figure.subplots()
    names = [name for name, _ in shown][::-1]  # barh draws bottom-up: reverse to put the worst on top
    values = [value for _, value in shown][::-1]
    axis.barh(range(len(shown)), values, color="tab:red", alpha=0.8)
    for row, value in enumerate(values):
        axis.text(min(value + 0.01, 0.92), row, f"{value:.0%}", va="center", fontsize=8)
    axis.set_yticks(range(len(shown)), names, fontsize=8)
    axis.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean per class {mean:.1%}")
    axis.set_xlim(0, 1)
    axis.set_xlabel("accuracy on the test split")
    axis.set_title(f"{title} ({len(shown)} of {len(present)})")
    axis.legend(loc="upper right", fontsize=8)  # the worst (shortest) bars are at the top
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, output_path)


def _accuracy_strip(axis, ranked, named, mean):
    """Every class's accuracy as a thin bar, worst to best; the ``named`` worst in red, the best three named."""
    values = [value for _, value in ranked]
    colours = ["tab:red" if rank < named else "tab:blue" for rank in range(len(values))]
    axis.bar(range(len(values)), values, width=1.0, color=colours, alpha=0.8, linewidth=0)
    axis.axhline(mean, color="black", linestyle="--", linewidth=1)
    best = ", ".join(f"{name} {value:.0%}" for name, value in ranked[::-1][:3])
    # Top left: the worst classes' bars are short there, so the text covers none.
    axis.text(0.01, 0.95, f"best: {best}", transform=axis.transAxes, va="top", fontsize=8)
    axis.set_xlim(-0.5, len(values) - 0.5)
    axis.set_ylim(0, 1.15)  # room for the text above a bar at 100%
    axis.set_yticks([0, 0.5, 1])
    axis.set_ylabel("accuracy", fontsize=8)
    axis.set_xlabel(f"all {len(values)} classes, worst to best (red: the ones named above)", fontsize=8)
    axis.tick_params(labelsize=8)
    axis.grid(axis="y", alpha=0.3)
