"""The tf.data input pipeline, built around ``keras.utils.image_dataset_from_directory``.

A split is materialised as a folder of symbolic links to the scanned, decodable files
(``split_view/<split>/<class>/<file>``), and ``image_dataset_from_directory`` reads that
folder: it never meets a broken file, its labels follow our class order, and the split
stays exactly the saved file list. On top: optional cache of decoded, resized images,
then for evaluation batching in file order (:func:`make_dataset`), and for training a
per-epoch shuffle, batching and augmentation that depend only on (seed, epoch)
(:class:`EpochBatches`), so a resumed run replays the same batches.

One source of truth for preprocessing: every image the project feeds a model, in
training, evaluation, explanation or serving, is decoded by ``tf.io.decode_image``
(3 channels, first frame) and resized bilinearly to a square, exactly as
``image_dataset_from_directory`` does; :func:`decode_and_resize` is that function for
callers outside the pipeline. Normalization is the model's own first layer.
"""

import os
import pathlib
import shutil

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.data.augment import augment_batch
from keras_caltech.errors import UserError

# Normalization modes: (mean, std) per RGB channel in 0-1 units; "dataset" is computed.
NORMALIZATION_MODES = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dataset": None,
}
CACHE_MODES = ("none", "memory", "disk")


def decode_and_resize(encoded, image_size):
    """Decodes image bytes and resizes them the way the training pipeline does.

    Args:
        encoded: scalar string tensor: JPEG, PNG, GIF (first frame) or BMP bytes.
        image_size: side of the square output.

    Returns:
        float32 tensor (image_size, image_size, 3), RGB, values 0-255.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)  # (h, w, 3) uint8
    return tf.image.resize(image, (image_size, image_size), method="bilinear")


def load_image(path, image_size):
    """Reads one image file as the model sees it: float32 (size, size, 3) in 0-255."""
    return decode_and_resize(tf.io.read_file(str(path)), image_size).numpy()


def materialize_split(root, pairs, class_names, view_dir):
    """Creates ``view_dir/<class>/<file>`` symbolic links to a split's files.

    Args:
        root: the dataset folder the relative paths start from.
        pairs: (relative path, label) of the split.
        class_names: class folder names; every class gets a folder, even an empty one,
            so labels keep their indices.
        view_dir: folder to (re)create.

    Returns:
        ``view_dir`` as a pathlib.Path.
    """
    root, view_dir = pathlib.Path(root), pathlib.Path(view_dir)
    if view_dir.exists():
        shutil.rmtree(view_dir)
    for name in class_names:
        (view_dir / name).mkdir(parents=True)
    for relative, label in pairs:
        # Nested files (e.g. a subfolder of a class) are flattened into one name.
        flat_name = pathlib.Path(relative).relative_to(class_names[label]).as_posix().replace("/", "__")
        os.symlink(root / relative, view_dir / class_names[label] / flat_name)
    return view_dir


def _decoded_images(view_dir, class_names, image_size, cache, cache_path):
    """(image float32 (size, size, 3) 0-255, label int32) of a split view in file order, optionally cached.

    Returns:
        (dataset, number of images).
    """
    if cache not in CACHE_MODES:
        raise UserError(f"data.cache must be one of {', '.join(CACHE_MODES)}. Received: {cache!r}")
    # image_dataset_from_directory does the parallel decode and the resize; the training
    # pipeline shuffles after the cache itself, so the cached order is fixed.
    dataset = keras.utils.image_dataset_from_directory(
        view_dir, labels="inferred", label_mode="int", class_names=class_names,
        batch_size=None, image_size=(image_size, image_size), shuffle=False,
        interpolation="bilinear", verbose=False)
    num_images = len(dataset.file_paths)
    if num_images == 0:
        raise UserError(f"split folder {view_dir} holds no images")
    dataset = dataset.map(lambda image, label: (image, tf.cast(label, tf.int32)))
    if cache == "memory":
        dataset = dataset.cache()
    elif cache == "disk":
        pathlib.Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        dataset = dataset.cache(str(cache_path))
    return dataset, num_images


def make_dataset(view_dir, class_names, image_size, batch_size, *, cache="none", cache_path=None):
    """Builds the batched, unshuffled, unaugmented pipeline of one split view (evaluation, statistics).

    Args:
        view_dir: a folder made by :func:`materialize_split`.
        class_names: class folder names in label order.
        image_size: side of the square images the model takes.
        batch_size: images per batch.
        cache: "none", "memory" or "disk" (decoded, resized images).
        cache_path: file prefix for the disk cache.

    Returns:
        A tf.data.Dataset of (images float32 (batch, size, size, 3) 0-255, labels int32 (batch,)),
        in file order (class by class).
    """
    dataset, _ = _decoded_images(view_dir, class_names, image_size, cache, cache_path)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_seed(seed, epoch):
    """The seed of one epoch's shuffle and augmentation, derived from the run's seed."""
    return (seed * 1_000_003 + epoch) % (2 ** 31 - 1)


class EpochBatches:
    """The training split's batches, one dataset per epoch, each a pure function of (seed, epoch).

    tf.data's ``shuffle(reshuffle_each_iteration=True)`` draws the k-th epoch's order from
    how many times the dataset object has been iterated, and Keras' random layers from
    seed variables that advance with every call; a resumed process would restart both
    from zero. Here epoch k is shuffled with its own seed and every batch is augmented
    with a key folded from (epoch seed, batch index), so a resumed run sees exactly the
    batches an uninterrupted one does. The decoded (and cached) images are shared by
    every epoch.

    Args:
        view_dir: a folder made by :func:`materialize_split`.
        class_names: class folder names in label order.
        image_size: side of the square images the model takes.
        batch_size: images per batch.
        augmenter: a Keras augmenter (see data/augment.py) mapping (batch, load_size,
            load_size, 3) 0-255 images to (batch, image_size, image_size, 3), or None.
        cache: "none", "memory" or "disk" (decoded, resized images; before augmentation).
        cache_path: file prefix for the disk cache.
        seed: the run's seed.
        load_size: side to decode and resize to before augmentation (e.g. 256 for a
            random 224 crop); defaults to ``image_size``.

    Calling ``batches(epoch)`` returns a tf.data.Dataset of (images float32 (batch, size,
    size, 3) 0-255, labels int32 (batch,)); ``len(batches)`` is the number of batches per epoch.
    """

    def __init__(self, view_dir, class_names, image_size, batch_size, *, augmenter=None, cache="none",
                 cache_path=None, seed=0, load_size=None):
        self.images, self.num_images = _decoded_images(view_dir, class_names, load_size or image_size,
                                                       cache, cache_path)
        self.batch_size = batch_size
        self.augmenter = augmenter
        self.seed = seed

    def __len__(self):
        return -(-self.num_images // self.batch_size)

    def __call__(self, epoch):
        seed = epoch_seed(self.seed, epoch)
        dataset = self.images.shuffle(self.num_images, seed=seed, reshuffle_each_iteration=False)
        dataset = dataset.batch(self.batch_size)
        if self.augmenter is not None:
            def augment(index, batch):
                images, labels = batch
                key = tf.stack([tf.constant(seed, tf.int64), index])
                return augment_batch(self.augmenter, images, key), labels

            dataset = dataset.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)


def channel_statistics(dataset, max_batches=None):
    """Per-channel mean and standard deviation (0-1 units) of a batched 0-255 image dataset.

    Args:
        dataset: yields (images (batch, h, w, 3) 0-255, labels), without augmentation.
        max_batches: stop after this many batches (a sample suffices for big datasets).

    Returns:
        (mean, std): two lists of three floats.
    """
    total = np.zeros(3)
    total_squares = np.zeros(3)
    count = 0
    for index, (images, _) in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        pixels = images.numpy().reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(axis=0)
        total_squares += (pixels ** 2).sum(axis=0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(total_squares / count - mean ** 2, 1e-12))
    return [round(float(value), 6) for value in mean], [round(float(value), 6) for value in std]
