"""Stratified, seeded train / validation / test splits.

``image_dataset_from_directory``'s ``validation_split`` is not stratified, and with
Caltech-256's imbalance (80 to 827 images per class) a random cut leaves some classes
thin in the test set. Here every class is cut separately, so each split keeps the
class proportions, and the cut depends only on the seed and the file list.

Two protocols (``data.protocol``): ``train_val_test`` holds out a test split that nothing
in training sees, and carves a validation split from the training part to select the
checkpoint; ``train_val`` is the published reports' protocol, one held-out split that
both selects the checkpoint and is reported, so its figure is optimistic by the
selection. Under ``train_val`` the test split is the validation split, file for file.
"""

import zlib

import numpy as np

from keras_caltech.errors import UserError

SPLIT_NAMES = ("train", "val", "test")


# Said wherever a train_val run's figures are shown.
TRAIN_VAL_NOTE = ("train_val protocol, as the published reports: the same images selected the "
                  "checkpoint, so the figure is optimistic by that choice")


def held_out_name(protocol):
    """What the test split's figures are called under ``protocol``: "test" or "validation"."""
    return "validation" if protocol == "train_val" else "test"


def stratified_split(files, class_names, *, test_fraction=0.2, val_fraction=0.1,
                     train_per_class=0, test_per_class=0, seed=0, protocol="train_val_test"):
    """Splits (path, label) pairs into train, val and test, class by class.

    Args:
        files: list of (relative path, label).
        class_names: the class names; labels index into it.
        test_fraction: share of each class held out for testing (default protocol).
        val_fraction: share of each class's training part held out for checkpoint
            selection; 0 disables validation. Not used by the train_val protocol.
        train_per_class: if > 0, the literature's protocol: this many training images
            per class (validation carved from them), all the rest for testing.
        test_per_class: if > 0, at most this many test images per class; the rest of
            the held-out images are used by no split.
        seed: the split is a function of the seed and the file list only.
        protocol: "train_val_test", or "train_val": the held-out images are both the
            validation and the test split (see the module docstring).

    Returns:
        dict with keys "train", "val", "test", each a list of (path, label) sorted by path.

    Raises:
        UserError: a fraction out of range, or a class too small for the protocol.
    """
    if not 0.0 < test_fraction < 1.0 and not train_per_class:
        raise UserError(f"data.test_fraction must be between 0 and 1. Received: {test_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1). Received: {val_fraction}")
    by_class = [[] for _ in class_names]
    for path, label in sorted(files):
        by_class[label].append(path)
    splits = {name: [] for name in SPLIT_NAMES}
    too_small = []
    for label, paths in enumerate(by_class):
        # Seeded by the class's name, not its label: the label changes with include/exclude
        # lists, and a class must split the same way in every run (no test image of one
        # run in the training set of another run, e.g. with --init-from).
        order = np.random.default_rng([seed, zlib.crc32(class_names[label].encode())]).permutation(len(paths))
        paths = [paths[index] for index in order]
        if train_per_class:
            num_train = train_per_class
            if len(paths) <= num_train:
                too_small.append(f"{class_names[label]} ({len(paths)} images)")
                continue
        else:
            num_test = max(1, round(len(paths) * test_fraction))
            num_train = len(paths) - num_test
            if num_train < 1:
                too_small.append(f"{class_names[label]} ({len(paths)} images)")
                continue
        train, test = paths[:num_train], paths[num_train:]
        if test_per_class:
            test = test[:test_per_class]
        if protocol == "train_val":
            val, train = test, train
        else:
            num_val = _num_val(len(train), val_fraction)
            val, train = train[:num_val], train[num_val:]
        splits["val"] += [(path, label) for path in val]
        splits["train"] += [(path, label) for path in train]
        splits["test"] += [(path, label) for path in test]
    if too_small:
        need = f"more than {train_per_class}" if train_per_class else "at least 2"
        raise UserError(f"class(es) {', '.join(too_small)} have too few usable images "
                        f"for this split (need {need}). Exclude them with data.exclude_classes "
                        "or change the split settings")
    return {name: sorted(pairs) for name, pairs in splits.items()}


def _num_val(num_train, val_fraction):
    """Validation images carved from a class's ``num_train``: at least one when asked for and possible."""
    num_val = round(num_train * val_fraction)
    return max(1, num_val) if val_fraction > 0 and num_train >= 2 else num_val
