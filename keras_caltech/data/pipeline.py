"""The tf.data input pipeline, built around ``keras.utils.image_dataset_from_directory``.

A split is materialised as a folder of symbolic links to the scanned, decodable files
(``split_view/<split>/<class>/<file>``), and ``image_dataset_from_directory`` reads that
folder: it never meets a broken file, its labels follow our class order, and the split
stays exactly the saved file list. On top: optional cache of decoded, resized images,
shuffling, batching, training-only augmentation, prefetch.

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

from keras_caltech.errors import UserError

# Normalization modes: (mean, std) per RGB channel in 0-1 units; "dataset" is computed.
NORMALIZATION_MODES = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dataset": None,
}
CACHE_MODES = ("none", "memory", "disk")
# Decoded images held for reshuffling a cached training split (memory: buffer x image bytes).
CACHED_SHUFFLE_BUFFER = 4096


def decode(encoded):
    """Decodes image bytes as the pipeline does, before any resizing.

    Args:
        encoded: scalar string tensor: JPEG, PNG, GIF (first frame) or BMP bytes.

    Returns:
        uint8 tensor (height, width, 3), RGB; grey and RGBA become RGB.
    """
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def decode_and_resize(encoded, image_size):
    """Decodes image bytes and resizes them the way the training pipeline does.

    Args:
        encoded: scalar string tensor: JPEG, PNG, GIF (first frame) or BMP bytes.
        image_size: side of the square output.

    Returns:
        float32 tensor (image_size, image_size, 3), RGB, values 0-255.
    """
    image = decode(encoded)  # (h, w, 3) uint8
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


def _int32_labels(image, label):
    return image, tf.cast(label, tf.int32)


def make_dataset(view_dir, class_names, image_size, batch_size, *, training=False, augmenter=None,
                 cache="none", cache_path=None, seed=0, load_size=None):
    """Builds the batched tf.data pipeline for one split view.

    Args:
        view_dir: a folder made by :func:`materialize_split`.
        class_names: class folder names in label order.
        image_size: side of the square images the model takes.
        batch_size: images per batch.
        training: shuffle each epoch and apply ``augmenter``.
        augmenter: a callable on (batch, load_size, load_size, 3) 0-255 images returning
            (batch, image_size, image_size, 3), or None.
        cache: "none", "memory" or "disk" (decoded, resized float32 images, before
            augmentation; memory costs images x size^2 x 12 bytes, so use "disk" for
            Caltech-256 at 224 px).
        cache_path: file prefix for the disk cache.
        seed: shuffling seed.
        load_size: side to decode and resize to before augmentation (e.g. 256 for a
            random 224 crop); defaults to ``image_size``.

    Returns:
        A tf.data.Dataset of (images float32 (batch, size, size, 3) 0-255, labels int32 (batch,)),
        with attribute ``file_paths``: the view's files in dataset order when not training
        (as on the dataset ``image_dataset_from_directory`` returns).
    """
    if cache not in CACHE_MODES:
        raise UserError(f"data.cache must be one of {', '.join(CACHE_MODES)}. Received: {cache!r}")
    load_size = load_size or image_size
    # With shuffle=True, image_dataset_from_directory permutes the whole file list once
    # (seeded) and then reshuffles paths in a 1024-wide window each epoch, before
    # decoding: a uniform order without holding decoded images in a huge buffer.
    dataset = keras.utils.image_dataset_from_directory(
        view_dir, labels="inferred", label_mode="int", class_names=class_names,
        batch_size=None, image_size=(load_size, load_size), shuffle=training, seed=seed,
        interpolation="bilinear", verbose=False)
    file_paths = dataset.file_paths
    num_images = len(file_paths)
    if num_images == 0:
        raise UserError(f"split folder {view_dir} holds no images")
    dataset = dataset.map(_int32_labels)
    if cache == "memory":
        dataset = dataset.cache()
    elif cache == "disk":
        pathlib.Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        dataset = dataset.cache(str(cache_path))
    if training and cache != "none":
        # A cache replays its first pass in order; reshuffle the decoded images on top.
        dataset = dataset.shuffle(min(num_images, CACHED_SHUFFLE_BUFFER), seed=seed,
                                  reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augmenter is not None:
        def augment(images, labels):
            return augmenter(images, training=True), labels

        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset.file_paths = file_paths  # evaluation maps each prediction back to its image
    return dataset


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
