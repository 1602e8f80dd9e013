"""Figures on their own canvas, and writing them: what every plotting module draws on.

Figures are built with matplotlib's object API on an Agg canvas (``Figure`` with a
``FigureCanvasAgg``), never with pyplot: pyplot keeps every open figure in one global
registry and switches a global backend, which is not thread-safe, while a ``Figure`` of
its own is.
"""

import os
import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width, height, layout="constrained"):
    """A matplotlib Figure of ``width`` x ``height`` inches on its own Agg canvas."""
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path):
    """Writes a figure (PNG by the suffix) and returns its path, creating folders.

    Through a temporary name and an atomic rename: a killed run never leaves half a PNG
    in its run folder.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=100)
    os.replace(temporary, path)
    return path
