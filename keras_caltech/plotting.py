"""Every figure the project draws, in one place (matplotlib, no screen needed)."""

import csv
import os
import pathlib

import matplotlib

matplotlib.use("Agg")  # headless: CI machines and servers have no display
import matplotlib.pyplot as plt  # noqa: E402


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
    figure.tight_layout()
    # Through a temporary name and an atomic rename: a killed run never leaves half a PNG.
    output_path = pathlib.Path(output_path)
    temporary = output_path.with_name(f".{output_path.stem}.tmp{output_path.suffix}")
    figure.savefig(temporary, dpi=100)
    os.replace(temporary, output_path)
    plt.close(figure)
    return output_path
