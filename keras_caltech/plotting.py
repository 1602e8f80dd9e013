"""Every figure the project draws, in one place (matplotlib, no screen needed)."""

import csv
import os
import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: CI machines and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402


def plot_curves(history_csv, output_path):
    """Draws loss and accuracy per epoch, training vs validation, from Keras' CSVLogger file."""
    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((loss_axis, "loss", "Loss"), (accuracy_axis, "accuracy", "Top-1 accuracy")):
        axis.plot(epochs, [float(row[key]) for row in rows], marker="o", label="train")
        if f"val_{key}" in rows[0]:
            axis.plot(epochs, [float(row[f"val_{key}"]) for row in rows], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, output_path)


def _save(figure, output_path):
    """Writes ``figure`` as a PNG through a temporary name and an atomic rename, then closes it.

    A killed run never leaves half a PNG in its run folder.
    """
    figure.tight_layout()
    output_path = pathlib.Path(output_path)
    temporary = output_path.with_name(f".{output_path.stem}.tmp{output_path.suffix}")
    figure.savefig(temporary, dpi=100)
    os.replace(temporary, output_path)
    plt.close(figure)
    return output_path


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
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
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
    return _save(figure, output_path)


def plot_per_class_accuracy(per_class_accuracy, output_path, *, worst=25, title="Worst classes"):
    """Draws the accuracies of the ``worst`` classes as named horizontal bars, worst on top.

    Args:
        per_class_accuracy: class name -> accuracy in [0, 1], or None for a class with
            no test images (left out).
        output_path: PNG to write.
        worst: how many classes to show.
        title: figure title.

    Returns:
        ``output_path``.
    """
    present = {name: value for name, value in per_class_accuracy.items() if value is not None}
    shown = sorted(present.items(), key=lambda item: (item[1], item[0]))[:worst]  # worst first
    mean = sum(present.values()) / max(1, len(present))
    figure, axis = plt.subplots(figsize=(8, 1.0 + 0.3 * len(shown)))
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
    return _save(figure, output_path)
