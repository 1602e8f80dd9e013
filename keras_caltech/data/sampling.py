"""Class-balanced sampling of a training split, for imbalanced datasets such as Caltech-256.

Caltech-256 has 80 to 827 images per class, so an unweighted epoch shows the largest
class ten times as often as the smallest. Here every training example is drawn by first
picking a class uniformly, then the next image of that class (each class cycles through
its own shuffled files), with ``tf.data.Dataset.sample_from_datasets``. Rare classes'
images repeat within an epoch, frequent classes' images are skipped; an epoch keeps
the split's size, so schedules counted in epochs keep their meaning.

Rejection resampling (``Dataset.rejection_resample``) would reach the same class
distribution by discarding drawn images: it decodes every image to keep about one in
ten of the largest class's, and an epoch's length would vary. Sampling file paths and
decoding only what is drawn costs nothing extra.

The alternative to resampling is weighting the loss (``train.class_weight=balanced``,
see ``keras_caltech.training.recipes``).
"""

import pathlib

import numpy as np
import tensorflow as tf

from keras_caltech.data.pipeline import decode_and_resize
from keras_caltech.errors import UserError


def class_counts(labels, num_classes):
    """Number of examples of each class.

    Args:
        labels: integer labels in [0, num_classes).
        num_classes: number of classes.

    Returns:
        int64 array (num_classes,).
    """
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def make_balanced_dataset(view_dir, class_names, image_size, batch_size, *, augmenter=None, seed=0,
                          load_size=None):
    """Builds batched training data in which every class is drawn equally often.

    Args:
        view_dir: a split folder made by ``pipeline.materialize_split``.
        class_names: class folder names in label order.
        image_size: side of the square images the model takes.
        batch_size: images per batch.
        augmenter: as in ``pipeline.make_dataset``, or None.
        seed: sampling and shuffling seed.
        load_size: side to decode to before augmentation; defaults to ``image_size``.

    Returns:
        A tf.data.Dataset of (images float32 (batch, size, size, 3) 0-255, labels int32
        (batch,)), with as many images per epoch as the split holds. Images are decoded
        as they are drawn, so ``data.cache`` does not apply to it.

    Raises:
        UserError: a class folder of the split holds no image.
    """
    view_dir = pathlib.Path(view_dir)
    load_size = load_size or image_size
    files = [sorted(str(path) for path in (view_dir / name).iterdir()) for name in class_names]
    empty = [name for name, paths in zip(class_names, files) if not paths]
    if empty:
        raise UserError(f"balanced sampling needs training images of every class; "
                        f"{', '.join(empty[:5])} ha{'s' if len(empty) == 1 else 've'} none in {view_dir}")
    num_images = sum(len(paths) for paths in files)

    def class_stream(label, paths):
        # Each pass over a class is a new permutation of its file paths (cheap strings);
        # images are decoded only once drawn.
        return (tf.data.Dataset.from_tensor_slices(paths)
                .shuffle(len(paths), seed=seed + label, reshuffle_each_iteration=True)
                .repeat()
                .map(lambda path: (path, tf.constant(label, tf.int32))))

    streams = [class_stream(label, paths) for label, paths in enumerate(files)]
    dataset = tf.data.Dataset.sample_from_datasets(
        streams, weights=[1.0 / len(streams)] * len(streams), seed=seed,
        rerandomize_each_iteration=True).take(num_images)  # one epoch: the split's size

    def load(path, label):
        # The decoder and resize of image_dataset_from_directory (see pipeline.py).
        return decode_and_resize(tf.io.read_file(path), load_size), label

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augmenter is not None:
        dataset = dataset.map(lambda images, labels: (augmenter(images, training=True), labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
