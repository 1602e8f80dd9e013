"""Training recipes on top of the plain loop: label smoothing, MixUp/CutMix, class weights.

Label smoothing and batch mixing both train on class probabilities instead of class
indices, so when any of them is on the labels become one-hot vectors in the pipeline,
the loss becomes ``CategoricalCrossentropy(from_logits=True, label_smoothing=...)`` and
the metrics their categorical twins, under the same names (``accuracy``, ``top5``,
hence ``val_accuracy``) that callbacks and history files expect. On a mixed batch,
training accuracy counts the class with the larger share as the label.

MixUp and CutMix are Keras's layers, applied to whole training batches in tf.data after
the per-image augmentation, with their random draws keyed per batch like the
augmentation's (``pipeline.EpochBatches``); validation and test data are never mixed.

Class weights (``train.class_weight=balanced``) give each class the loss weight
``n / (num_classes * n_class)`` from the training split's counts (scikit-learn's
"balanced" heuristic), so every class contributes equally to the expected loss. They
reach the loss as the training batches' sample weights, by each label's largest entry,
which is what ``fit(class_weight=...)`` does (the training loop is not ``fit``, see
loop.py).
"""

import pathlib

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.config import check_choice
from keras_caltech.data.augment import build_augmenter, keyed_randomness, load_size
from keras_caltech.data.pipeline import EpochBatches, make_dataset
from keras_caltech.data.sampling import class_counts
from keras_caltech.errors import UserError


def uses_class_probabilities(config):
    """Whether ``config`` trains on one-hot (smoothed or mixed) labels instead of indices."""
    return (config.train.label_smoothing > 0 or config.augment.mixup_alpha > 0
            or config.augment.cutmix_alpha > 0)


def describe_recipe(config):
    """What a run trains and how, for the first line it prints.

    Returns:
        One line: the config's name, model (and dropout, when set), optimizer, schedule,
        weight decay, label smoothing and the augmentations that are on.
    """
    train, augment = config.train, config.augment
    dropout = ("" if config.model.dropout is None else f", dropout {config.model.dropout:g}")
    schedule = {"onecycle": f"one-cycle (peak {train.learning_rate:g}, {train.pct_start:g} rising)",
                "cosine": f"cosine (peak {train.learning_rate:g}, {train.warmup_epochs:g} warm-up epochs)",
                "step": f"step (x{train.step_gamma:g} every {train.step_epochs} epochs from {train.learning_rate:g})",
                }.get(train.schedule, f"{train.schedule} {train.learning_rate:g}")
    augmentations = [name for name in ("horizontal_flip", "random_resized_crop") if getattr(augment, name)]
    augmentations += [f"{name} {getattr(augment, name):g}" for name in
                      ("resize_crop", "rotation", "translation", "zoom", "shear", "color_jitter",
                       "rand_augment_ops", "random_erasing", "mixup_alpha", "cutmix_alpha") if getattr(augment, name)]
    return (f"recipe {config.name}: {config.model.name}{dropout}; {train.optimizer}, {schedule}, "
            f"weight decay {train.weight_decay:g}, label smoothing {train.label_smoothing:g}; "
            f"augment: {', '.join(augmentations) or 'none'}")


def loss_and_metrics(config, num_classes):
    """Returns (loss, metrics) to compile a model with, for integer or one-hot labels.

    Args:
        config: the run's Config.
        num_classes: number of classes (top-5 becomes top-k for fewer than 5).

    Returns:
        A Keras loss on logits, and [accuracy, top5] metrics named ``accuracy`` and ``top5``.
    """
    top_k = min(5, num_classes)
    if uses_class_probabilities(config):
        return (keras.losses.CategoricalCrossentropy(from_logits=True,
                                                     label_smoothing=config.train.label_smoothing),
                [keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(k=top_k, name="top5")])
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
             keras.metrics.SparseTopKCategoricalAccuracy(k=top_k, name="top5")])


def build_batch_mixer(augment, num_classes, seed=0):
    """Returns ``mix(images, one_hot_labels, key) -> (images, labels)`` for MixUp/CutMix, or None.

    Args:
        augment: the config's ``augment`` section.
        num_classes: length of the label vectors.
        seed: seed of the mixing layers (their draws are then keyed per batch).

    Returns:
        A function on a batch (images float32 (batch, h, w, 3) 0-255, labels float32
        (batch, num_classes), key int64 (2,)) returning the mixed batch, shapes
        unchanged, a function of its arguments alone; None when both are off. With both
        on, each batch gets MixUp or CutMix with equal chance.
    """
    layers = []
    if augment.mixup_alpha > 0:
        layers.append(keras.layers.MixUp(alpha=augment.mixup_alpha, seed=seed + 10, name="mixup"))
    if augment.cutmix_alpha > 0:
        # Keras's CutMix draws Beta(a, a) with a uniform in ``factor``; (alpha, alpha)
        # fixes a = alpha, as in the paper.
        layers.append(keras.layers.CutMix(factor=(augment.cutmix_alpha, augment.cutmix_alpha),
                                          seed=seed + 11, name="cutmix"))
    if not layers:
        return None

    def apply(layer, images, labels):
        mixed = layer({"images": images, "labels": labels}, training=True)
        return mixed["images"], mixed["labels"]

    def mix(images, labels, key):
        with keyed_randomness(layers, key):
            if len(layers) == 1:
                return apply(layers[0], images, labels)
            # The layers' generators draw from fold_in(key, 0) and (key, 1); the choice from (key, 2).
            choice_seed = tf.random.experimental.stateless_fold_in(tf.cast(key, tf.int64), len(layers))
            use_first = tf.random.stateless_uniform((), seed=choice_seed) < 0.5
            return tf.cond(use_first, lambda: apply(layers[0], images, labels),
                           lambda: apply(layers[1], images, labels))

    return mix


def batch_transform(config, num_classes, class_weight=None):
    """The last step of every training batch: one-hot labels, MixUp/CutMix, class weights.

    Args:
        config: the run's (or phase's) Config.
        num_classes: number of classes.
        class_weight: {class index: weight} from :func:`class_weights`, or None.

    Returns:
        ``transform(images, labels, key) -> batch`` for ``pipeline.EpochBatches``, or None
        when the batches stay (images, int labels). The batch is (images, labels) or, with
        class weights, (images, labels, sample weights float32 (batch,)); labels are int32
        (batch,) or, under :func:`uses_class_probabilities`, float32 (batch, num_classes).
    """
    probabilities = uses_class_probabilities(config)
    mixer = build_batch_mixer(config.augment, num_classes, seed=config.train.seed) if probabilities else None
    weights = (None if class_weight is None
               else tf.constant([class_weight[index] for index in range(num_classes)], tf.float32))
    if not probabilities and weights is None:
        return None

    def transform(images, labels, key):
        if probabilities:
            labels = tf.one_hot(labels, num_classes, dtype=tf.float32)  # (batch, num_classes)
            if mixer is not None:
                images, labels = mixer(images, labels, key)
        if weights is None:
            return images, labels
        # As fit(class_weight=...): the weight of each example's largest label entry.
        classes = tf.argmax(labels, axis=-1) if probabilities else labels
        return images, labels, tf.gather(weights, classes)

    return transform


def one_hot_labels(dataset, num_classes):
    """Maps a batched (images, int labels) dataset to float32 one-hot labels (batch, num_classes)."""
    def transform(images, labels):
        return images, tf.one_hot(labels, num_classes, dtype=tf.float32)

    return dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def class_weights(labels, num_classes, mode="balanced"):
    """Loss weight per class from the training labels, for :func:`batch_transform`.

    Args:
        labels: the training split's integer labels.
        num_classes: number of classes.
        mode: "balanced" for ``n / (num_classes * n_class)``; "none" for no weighting.

    Returns:
        {class index: weight} (weights average 1 over the training examples), or None
        for mode "none".

    Raises:
        UserError: unknown mode, or a class without training examples.
    """
    if check_choice("train.class_weight", mode) == "none":
        return None
    counts = class_counts(labels, num_classes)
    if not counts.all():
        missing = [str(index) for index in np.flatnonzero(counts == 0)[:5]]
        raise UserError(f"class_weight=balanced needs training images of every class; class(es) "
                        f"{', '.join(missing)} have none")
    weights = counts.sum() / (num_classes * counts)
    return {index: float(weight) for index, weight in enumerate(weights)}


def _crop_suffix(config, size):
    """Names a validation cache of central crops apart from one of whole images."""
    return f"_crop{config.augment.resize_crop}" if config.augment.resize_crop > size else ""


def make_fit_data(config, files, class_names, cache_dir, final_size, class_weight=None):
    """The training batches and validation data of one phase's config.

    Args:
        config: the phase's Config (its data.image_size may be a progressive stage's).
        files: split name -> (paths, labels) (``pipeline.split_files``); "val" may be absent.
        class_names: class folder names in label order.
        cache_dir: folder for ``data.cache=disk`` files.
        final_size: the run's data.image_size; other sizes get their own cache files.
        class_weight: {class index: weight} from :func:`class_weights`, or None.

    Returns:
        (training batches, validation data or None): a ``pipeline.EpochBatches`` whose
        batches are augmented, then finished by :func:`batch_transform`, and a dataset of
        unaugmented (images, labels) batches, labels one-hot when the training ones are.
    """
    size, batch_size, seed = config.data.image_size, config.data.batch_size, config.train.seed
    suffix = "" if size == final_size else f"_{size}px"
    num_classes = len(class_names)
    train_batches = EpochBatches(
        *files["train"], class_names, size, batch_size, augmenter=build_augmenter(config.augment, size, seed=seed),
        transform=batch_transform(config, num_classes, class_weight), cache=config.data.cache,
        cache_path=pathlib.Path(cache_dir) / f"train{suffix}", seed=seed,
        load_size=load_size(config.augment, size), balanced=config.data.balanced_sampling)
    val_data = (make_dataset(*files["val"], size, batch_size, cache=config.data.cache,
                             cache_path=pathlib.Path(cache_dir) / f"val{suffix}{_crop_suffix(config, size)}",
                             resize_crop=config.augment.resize_crop) if "val" in files else None)
    if val_data is not None and uses_class_probabilities(config):
        val_data = one_hot_labels(val_data, num_classes)
    return train_batches, val_data
