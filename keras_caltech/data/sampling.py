"""Class-balanced sampling of a training split, for imbalanced datasets such as Caltech-256.

Caltech-256 has 80 to 827 images per class, so an unweighted epoch shows the largest
class ten times as often as the smallest. Here every training example of an epoch is
drawn by first picking a class uniformly, then the next image of that class (each class
cycles through its own shuffled files). Rare classes' images repeat within an epoch,
frequent classes' images are skipped; an epoch keeps the split's size, so schedules
counted in epochs keep their meaning.

The draw is of file indices, from the epoch's seed (``pipeline.EpochBatches``): the
images are decoded only once drawn, and a resumed run draws the same epochs again.
Rejection resampling (``Dataset.rejection_resample``) would reach the same class
distribution by discarding decoded images: about nine in ten of the largest class's,
and an epoch's length would vary.

The alternative to resampling is weighting the loss (``train.class_weight=balanced``,
see ``keras_caltech.training.recipes``).
"""

import numpy as np


def class_counts(labels, num_classes):
    """Number of examples of each class.

    Args:
        labels: integer labels in [0, num_classes).
        num_classes: number of classes.

    Returns:
        int64 array (num_classes,).
    """
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def balanced_order(labels, num_classes, seed):
    """One epoch of class-balanced draws from a split: which example comes next, len(labels) times.

    Args:
        labels: int array (num_examples,), the split's labels; every class must occur.
        num_classes: number of classes.
        seed: the epoch's seed; the same seed gives the same draws.

    Returns:
        int64 array (num_examples,) of indices into ``labels``: every class about equally
        often, each class's examples in a new random order on every pass through them.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    drawn_classes = rng.integers(num_classes, size=len(labels))  # (num_examples,)
    order = np.empty(len(labels), np.int64)
    # Each class's slots and members, ascending, from one stable sort each: linear in the
    # split's size, where a comparison per class would take classes x examples.
    slots_by_class = _indices_by_class(drawn_classes, num_classes)
    members_by_class = _indices_by_class(labels, num_classes)
    for slots, members in zip(slots_by_class, members_by_class):
        passes = -(-len(slots) // len(members))
        cycle = np.concatenate([rng.permutation(members) for _ in range(passes)] or [members[:0]])
        order[slots] = cycle[:len(slots)]
    return order


def _indices_by_class(labels, num_classes):
    """For each class, the (ascending) indices of ``labels`` holding it."""
    grouped = np.argsort(labels, kind="stable")
    return np.split(grouped, np.cumsum(np.bincount(labels, minlength=num_classes))[:-1])
