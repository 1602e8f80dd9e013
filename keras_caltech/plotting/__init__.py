"""Every figure the project draws, in one place (no screen needed).

Modules: ``figures`` (a matplotlib Figure on its own Agg canvas, and ``save_figure``),
``charts`` (training curves and the evaluation's figures, each written as a PNG) and
``explanations`` (heatmaps, overlays, gradient, feature-map and patch figures, image
grids, each returned as a Figure for ``save_figure`` to write).
"""
