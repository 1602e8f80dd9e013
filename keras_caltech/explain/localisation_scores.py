"""Does a run's heatmap point at the object? Localisation scores, each beside a baseline.

- **against boxes** (datasets with ``boxes.json``, such as the synthetic one; heatmaps
  of the true class): the pointing game (the heatmap's maximum inside the object's box,
  within a tolerance) against a map that always points at the image centre, and the
  share of the heatmap's energy inside the box against a uniform map (whose share is
  the box's area).
- **grid pointing game** (every dataset, the only localisation score for Caltech):
  2x2 mosaics of test images of four classes; each class's heatmap must peak in its
  own tile. Chance is 0.25.

The measures of one heatmap are ``scoring``'s; here boxes are mapped onto the model's
input, mosaics are drawn from the sample, and the scores are summed up into the
``localisation`` and ``grid_pointing_game`` sections of ``explain_metrics.json``.
"""

import dataclasses

import numpy as np

from keras_caltech.data.pipeline import crop_window
from keras_caltech.explain.runs import load_split_images
from keras_caltech.explain.scoring import (centre_point_baseline, energy_in_box, grid_pointing_game,
                                           make_mosaic, pointing_game)

# Zhang et al. (2016) let the maximum miss the box by 15 px on images of about 224 px;
# the same share of the side at any input size (4.3 px at 64 px).
TOLERANCE_FRACTION = 15 / 224


def scale_box(entry, image_size, resize_crop=0):
    """Maps a ``boxes.json`` box onto the model's square input.

    Boxes are ``[x0, y0, x1, y1)`` in the saved image's pixels (``x1``, ``y1``
    exclusive), and the pipeline resizes the part of the image the model sees (all of
    it, or a central crop: ``pipeline.crop_window``) to ``image_size`` squared with
    half-pixel centres. Input pixel ``j`` has its centre at ``(j + 0.5) / scale`` in
    that part, so the pixels whose centres lie in the box run from ``x0 * scale - 0.5``
    to ``x1 * scale - 0.5``, ``x0`` measured from the part's left edge.

    Args:
        entry: {"box": [x0, y0, x1, y1], "width": w, "height": h}.
        image_size: side of the model's input.
        resize_crop: the run's ``augment.resize_crop``.

    Returns:
        [x0, y0, x1, y1] float pixel indices of the input, inclusive, as
        ``scoring.pointing_game`` takes them, clipped to the image; None when the box
        lies wholly outside the part the model sees.
    """
    left, top, right, bottom = crop_window(entry["width"], entry["height"], image_size, resize_crop)
    x0, y0, x1, y1 = entry["box"]
    if x1 <= left or x0 >= right or y1 <= top or y0 >= bottom:
        return None
    x_scale, y_scale = image_size / (right - left), image_size / (bottom - top)
    box = [(x0 - left) * x_scale - 0.5, (y0 - top) * y_scale - 0.5,
           (x1 - left) * x_scale - 0.5, (y1 - top) * y_scale - 0.5]
    return [float(np.clip(value, 0, image_size - 1)) for value in box]


def box_share(box, image_size):
    """Share of the input's pixels inside ``box``: the energy of a uniform map."""
    centres = np.arange(image_size)
    columns = ((centres >= box[0]) & (centres <= box[2])).sum()
    rows = ((centres >= box[1]) & (centres <= box[3])).sum()
    return float(rows * columns / image_size ** 2)


@dataclasses.dataclass(frozen=True)
class BoxScores:
    """How one heatmap of the true class locates the object's box, beside the baselines.

    Attributes:
        pointing_hit: the heatmap's maximum lies in the box, within the tolerance.
        centre_hit: the image centre does (the centre-point baseline).
        energy: share of the heatmap's energy inside the box.
        uniform_energy: that share for a uniform map: the box's share of the pixels.
    """

    pointing_hit: bool
    centre_hit: bool
    energy: float
    uniform_energy: float


def box_scores(heatmap, box, image_size, tolerance):
    """The :class:`BoxScores` of one heatmap; ``box`` as :func:`scale_box` returns it."""
    shape = (image_size, image_size)
    return BoxScores(pointing_hit=pointing_game(heatmap, box, shape, tolerance),
                     centre_hit=centre_point_baseline(box, shape, tolerance),
                     energy=energy_in_box(heatmap, box, shape), uniform_energy=box_share(box, image_size))


def _mean(values):
    return round(float(np.mean(values)), 6)


def localisation_section(located, tolerance):
    """The ``localisation`` section from a list of :class:`BoxScores`."""
    if not located:
        return {"skipped": "no boxes.json entry for these images (Caltech has no boxes): "
                           "see grid_pointing_game"}
    return {
        "explained": "true class", "num_images": len(located),
        "tolerance_px": round(tolerance, 3),
        "pointing_game": _mean([scores.pointing_hit for scores in located]),
        "centre_baseline": _mean([scores.centre_hit for scores in located]),
        "energy_in_box": _mean([scores.energy for scores in located]),
        "uniform_baseline": _mean([scores.uniform_energy for scores in located]),
    }


def mosaic_groups(labels, max_mosaics, rng):
    """Groups positions into fours of four different classes, each position used once.

    Args:
        labels: (n,) int labels of the candidate images.
        max_mosaics: stop after this many groups.
        rng: a NumPy Generator.

    Returns:
        A list of 4-lists of positions into ``labels``; empty with fewer than 4 classes.
    """
    pools = {int(label): list(rng.permutation(np.flatnonzero(labels == label)))
             for label in np.unique(labels)}
    groups = []
    while len(groups) < max_mosaics:
        available = [label for label, pool in pools.items() if pool]
        if len(available) < 4:
            break
        classes = rng.choice(available, size=4, replace=False)
        groups.append([int(pools[int(label)].pop()) for label in classes])
    return groups


def grid_pointing_game_section(run, explainer, positions, labels, max_mosaics, rng):
    """The ``grid_pointing_game`` section: how often each class's map peaks in its tile of 2x2 mosaics.

    Args:
        run: an ``ExplainedRun``.
        explainer: a CAM explainer of ``run.model``.
        positions: (n,) positions in the test split's file list.
        labels: (n,) int labels of those images.
        max_mosaics: at most this many mosaics.
        rng: a NumPy Generator; picks the mosaics.
    """
    groups = mosaic_groups(labels, max_mosaics, rng)
    if not groups:
        return {"skipped": f"needs test images of 4 classes; the sample has {len(np.unique(labels))}"}
    tiles, tile_labels = load_split_images(run, "test", positions[np.ravel(groups)])
    tiles = tiles.reshape(len(groups), 4, *tiles.shape[1:])  # (mosaics, 4, size, size, 3)
    tile_labels = tile_labels.reshape(len(groups), 4)
    mosaics = np.stack([make_mosaic(four) for four in tiles])  # (mosaics, size, size, 3)
    # Each mosaic explained once per class in it, all in one batched stream.
    maps = explainer(np.repeat(mosaics, 4, axis=0), tile_labels.ravel()).heatmaps
    maps = maps.reshape(len(groups), 4, *maps.shape[1:])
    hits = []
    for four, classes, mosaic_maps in zip(tiles, tile_labels, maps):
        def precomputed(_images, _classes, mosaic_maps=mosaic_maps):
            return mosaic_maps
        hits.append(grid_pointing_game(precomputed, four, classes))
    return {"explained": "each tile's true class", "num_mosaics": len(groups),
            "accuracy": _mean(np.concatenate(hits)), "chance": 0.25}
