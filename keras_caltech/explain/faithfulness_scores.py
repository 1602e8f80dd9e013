"""Does a run's heatmap show what the model used? Deletion and insertion, beside random maps.

Heatmaps of the predicted class: deleting the pixels a faithful map ranks first (most
salient first, towards black) makes the class's probability fall fast, and inserting
them (into a blurred image) makes it rise fast. Lower deletion AUC and higher
insertion AUC than a random map are better.

The random map is drawn at the heatmap's own resolution and upsampled like it, so that
the two differ only in where they point, not in how smooth they are. A per-pixel random
map is reported too: scattering black (deletion) or sharp (insertion) single pixels
makes an image unlike any training image, which moves the probability whatever the
locations, so it is a different, harder baseline.

The curves are ``scoring``'s; here one heatmap is scored against both baselines, and
the scores are summed up into the ``faithfulness`` section of ``explain_metrics.json``.
"""

import dataclasses

import numpy as np

from keras_caltech.explain.scoring import deletion_curve, faithfulness, insertion_curve, random_heatmap

FAITHFULNESS_STEPS = 32  # the model sees 33 images per curve: one forward pass


@dataclasses.dataclass(frozen=True)
class FaithfulnessScores:
    """Deletion and insertion AUCs of one heatmap of the predicted class, beside random maps.

    Attributes:
        deletion, insertion: AUCs of the heatmap.
        random_deletion, random_insertion: AUCs of a random map drawn at the heatmap's
            resolution and upsampled like it.
        pixel_deletion, pixel_insertion: AUCs of a per-pixel random map.
        empty: the heatmap was empty (the image argues against the class).
    """

    deletion: float
    insertion: float
    random_deletion: float
    random_insertion: float
    pixel_deletion: float
    pixel_insertion: float
    empty: bool


def faithfulness_scores(forward, image, heatmap, class_index, empty, seed):
    """The :class:`FaithfulnessScores` of one heatmap, explaining ``class_index``.

    Args:
        forward: the model's compiled forward pass.
        image: (size, size, 3) RGB 0-255.
        heatmap: (h, w) in [0, 1].
        class_index: the explained class.
        empty: whether the heatmap is empty.
        seed: seeds both random maps.
    """
    curve = dict(steps=FAITHFULNESS_STEPS, batch_size=FAITHFULNESS_STEPS + 1)  # one pass per curve
    scores = faithfulness(forward, image, heatmap, class_index, seed=seed, **curve)  # per-pixel random map
    coarse_random = random_heatmap(heatmap.shape, seed=seed)  # at the heatmap's resolution
    return FaithfulnessScores(
        deletion=scores.deletion, insertion=scores.insertion,
        random_deletion=deletion_curve(forward, image, coarse_random, class_index, **curve).auc,
        random_insertion=insertion_curve(forward, image, coarse_random, class_index, **curve).auc,
        pixel_deletion=scores.random_deletion, pixel_insertion=scores.random_insertion, empty=empty)


def _mean(values):
    return round(float(np.mean(values)), 6)


def faithfulness_section(faithful):
    """The ``faithfulness`` section from a list of :class:`FaithfulnessScores`."""
    def column(name):
        return np.array([getattr(scores, name) for scores in faithful])

    deletion, insertion = column("deletion"), column("insertion")
    random_deletion, random_insertion = column("random_deletion"), column("random_insertion")
    pixel_deletion, pixel_insertion = column("pixel_deletion"), column("pixel_insertion")
    return {
        "explained": "predicted class", "num_images": len(faithful), "steps": FAITHFULNESS_STEPS,
        "deletion_auc": _mean(deletion), "random_deletion_auc": _mean(random_deletion),
        "insertion_auc": _mean(insertion), "random_insertion_auc": _mean(random_insertion),
        "beats_random": {"deletion": bool(deletion.mean() < random_deletion.mean()),
                         "insertion": bool(insertion.mean() > random_insertion.mean())},
        "pixel_random_deletion_auc": _mean(pixel_deletion),
        "pixel_random_insertion_auc": _mean(pixel_insertion),
        "beats_pixel_random": {"deletion": bool(deletion.mean() < pixel_deletion.mean()),
                               "insertion": bool(insertion.mean() > pixel_insertion.mean())},
        "empty_maps": int(column("empty").sum()),
    }
