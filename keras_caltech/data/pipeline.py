"""The tf.data input pipeline: one reader of a split, then cache, batching, augmentation.

Every image the project feeds a model, in training, evaluation, test-time augmentation,
explanation or serving, is decoded by ``tf.io.decode_image`` (3 channels, first frame)
and resized bilinearly to a square, exactly as ``keras.utils.image_dataset_from_directory``
does (tested bit for bit against it): :func:`decode_and_resize`. A split is read by one
function, :func:`read_split`, from its file list; :func:`make_dataset` (evaluation,
validation, statistics) and :class:`EpochBatches` (training) are built on it, and
explanations read chosen images through it. Normalization is the model's own first layer.

Why the reader is not ``image_dataset_from_directory`` itself, though it decodes as that
function does: a split is a saved, seeded file list (``splits.json``), not a folder, so
that function would need a folder of symbolic links per split; training reads each epoch
in an order that is a function of (seed, epoch) alone, so that a resumed run replays the
batches of an uninterrupted one, or draws classes equally often with repeats; and
explanations read chosen images in a chosen order. ``image_dataset_from_directory``
lists and orders a folder itself and takes none of these orders.

A run that trained on random crops of a larger resize (``augment.resize_crop``) is
evaluated, explained and served on the central crop of that resize, so objects keep the
scale training showed them at; 10-crop testing's centre view is that same crop.
"""

import concurrent.futures
import contextlib
import os
import pathlib

import numpy as np
import tensorflow as tf

from keras_caltech.config import CACHE_MODES
from keras_caltech.data.augment import augment_batch
from keras_caltech.data.pixel_limit import assert_pixel_limit
from keras_caltech.data.sampling import balanced_order
from keras_caltech.data.scan import check_image
from keras_caltech.errors import UserError

# (mean, std) per RGB channel in 0-1 units of each of config.NORMALIZATIONS; "dataset" is computed.
NORMALIZATION_MODES = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dataset": None,
}
# Decoded images held for reshuffling a cached training split: at most this many, in at
# most this much memory (4096 images at 128 px, 1783 at 224 px; the cache's own order is
# already a full random permutation, so a window reshuffles enough).
CACHED_SHUFFLE_BUFFER = 4096
CACHED_SHUFFLE_BYTES = 1024**3
# What tf.data raises when a file it reads is gone, unreadable or no longer an image.
IMAGE_READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError,
                     tf.errors.PermissionDeniedError)


def decode(encoded):
    """Decodes image bytes as the pipeline does, before any resizing.

    Args:
        encoded: scalar string tensor: JPEG, PNG, GIF (first frame) or BMP bytes.

    Returns:
        uint8 tensor (height, width, 3), RGB; grey and RGBA become RGB.
    """
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def centre_crop(images, size):
    """The central ``size`` x ``size`` window of square images.

    Args:
        images: tensor (..., side, side, channels) with a static ``side >= size``.
        size: side of the crop.

    Returns:
        Tensor (..., size, size, channels). An odd margin leaves the extra pixel at the
        bottom and right (offset ``(side - size) // 2``, as 10-crop's centre view).
    """
    offset = (images.shape[-2] - size) // 2
    return images[..., offset:offset + size, offset:offset + size, :]


def resize_for_model(images, image_size, resize_crop=0):
    """Resizes decoded images to the model's test view.

    Args:
        images: tensor (height, width, 3) or (batch, height, width, 3), any dtype.
        image_size: side of the model's square input.
        resize_crop: the run's ``augment.resize_crop``: when larger than ``image_size``,
            resize to that side and take the central ``image_size`` crop; else resize
            straight to ``image_size``.

    Returns:
        float32 tensor (..., image_size, image_size, 3), values as given (0-255).
    """
    if resize_crop > image_size:
        return centre_crop(tf.image.resize(images, (resize_crop, resize_crop), method="bilinear"), image_size)
    return tf.image.resize(images, (image_size, image_size), method="bilinear")


def crop_window(width, height, image_size, resize_crop=0):
    """The part of a ``width`` x ``height`` image that :func:`resize_for_model` keeps.

    Returns:
        (x0, y0, x1, y1) float, in the image's pixels: the whole image unless
        ``resize_crop > image_size``.
    """
    if resize_crop <= image_size:
        return 0.0, 0.0, float(width), float(height)
    start, end = (resize_crop - image_size) // 2, (resize_crop - image_size) // 2 + image_size
    x_scale, y_scale = width / resize_crop, height / resize_crop
    return start * x_scale, start * y_scale, end * x_scale, end * y_scale


def decode_and_resize(encoded, image_size, resize_crop=0):
    """Decodes image bytes and resizes them the way the evaluation pipeline does.

    Args:
        encoded: scalar string tensor: JPEG, PNG, GIF (first frame) or BMP bytes.
        image_size: side of the square output.
        resize_crop: see :func:`resize_for_model`.

    Returns:
        float32 tensor (image_size, image_size, 3), RGB, values 0-255.
    """
    return resize_for_model(decode(encoded), image_size, resize_crop)  # decoded: (h, w, 3) uint8


def load_image(path, image_size, resize_crop=0):
    """Reads one image file as the model sees it: float32 (size, size, 3) in 0-255."""
    return decode_and_resize(tf.io.read_file(str(path)), image_size, resize_crop).numpy()


def split_files(root, pairs):
    """A split's (relative path, label) pairs as (absolute paths, labels int32 (n,)), in the same order."""
    return [str(pathlib.Path(root) / relative) for relative, _ in pairs], np.array([label for _, label in pairs],
                                                                                   np.int32)


def read_split(paths, labels, image_size, resize_crop=0):
    """The one reader of a split's images, in the order given.

    Args:
        paths: image files (str or Path).
        labels: their class indices.
        image_size: side of the square images returned.
        resize_crop: see :func:`resize_for_model` (0: resize the whole image).

    Returns:
        An unbatched tf.data.Dataset of (image float32 (image_size, image_size, 3) RGB
        0-255, label int32), decoded in parallel by :func:`decode_and_resize`. An image
        over the pixel limit (data/pixel_limit.py) fails the iteration before it is
        decoded: the scan checked every file once, but a file replaced since, or a run
        whose dataset moved, is read unscanned. The check reads the header only (a
        fraction of a decode's cost).
    """
    def load(path, label):
        return decode_and_resize(assert_pixel_limit(tf.io.read_file(path)), image_size, resize_crop), label

    files = tf.constant([str(path) for path in paths], tf.string, shape=(len(paths),))
    dataset = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int32).reshape(-1)))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def first_unreadable(paths):
    """The first of ``paths`` that no longer reads and decodes, as the scan checks it (data/scan.py).

    Returns:
        (path, reason), or None when every file is fine. Decodes in parallel, one thread
        per core, and stops at the first failure.
    """
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for path, reason in zip(paths, pool.map(check_image, paths)):
            if reason is not None:
                pool.shutdown(cancel_futures=True)
                return path, reason
    return None


@contextlib.contextmanager
def images_checked_on_error(paths, remedy):
    """Turns tf.data's error for an image that changed since the scan into one that names the file.

    The scan decoded every image of a run once, so a read or decode error while the
    run's splits are read means a file changed since (deleted, overwritten, truncated).
    tf.data's error does not say which (decoding happens inside the pipeline), so the
    files are checked again and the first that fails is named. An error that no file
    explains is raised unchanged. (That check decodes the files once more, a cost paid
    only after such an error; sizes and times recorded at the scan would need a new
    splits.json and miss a file overwritten in place with as many bytes.)

    Args:
        paths: the image files being read.
        remedy: what to do, the end of the message (e.g. how to continue the run).

    Raises:
        UserError: "image PATH changed since the dataset was scanned (REASON): REMEDY".
    """
    try:
        yield
    except IMAGE_READ_ERRORS:
        culprit = first_unreadable([str(path) for path in paths])
        if culprit is None:
            raise
        raise UserError(f"image {culprit[0]} changed since the dataset was scanned ({culprit[1]}): {remedy}") from None


def make_dataset(paths, labels, image_size, batch_size, *, cache="none", cache_path=None, load_size=None,
                 resize_crop=0):
    """The batched, unaugmented images of a split in file order (evaluation, validation, statistics).

    Args:
        paths: the split's image files.
        labels: their class indices.
        image_size: side of the square images the model takes.
        batch_size: images per batch.
        cache: "none", "memory" or "disk" (decoded, resized float32 images; memory costs
            images x size^2 x 12 bytes, so use "disk" for Caltech-256 at 224 px).
        cache_path: file prefix for the disk cache.
        load_size: side to decode and resize to, left uncropped (e.g. larger for
            10-crop testing); defaults to ``image_size``.
        resize_crop: the run's ``augment.resize_crop``: when larger than ``image_size``,
            images are resized to it and centre-cropped to ``image_size`` (see
            :func:`resize_for_model`); ignores ``load_size``.

    Returns:
        A tf.data.Dataset of (images float32 (batch, size, size, 3) 0-255, labels int32
        (batch,)) in the order of ``paths``, with attribute ``file_paths``: ``paths`` as str.

    Raises:
        UserError: unknown cache mode, or no images.
    """
    _check_cache_mode(cache)
    if not len(paths):
        raise UserError("the split holds no images")
    cropped = resize_crop > image_size
    dataset = read_split(paths, labels, image_size if cropped else load_size or image_size,
                         resize_crop if cropped else 0)
    dataset = _cached(dataset, cache, cache_path).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    dataset.file_paths = [str(path) for path in paths]  # evaluation maps each prediction back to its image
    return dataset


def _check_cache_mode(cache):
    if cache not in CACHE_MODES:
        raise UserError(f"data.cache must be one of {', '.join(CACHE_MODES)}. Received: {cache!r}")


def _cached(dataset, cache, cache_path):
    """``dataset`` behind a memory or disk cache, as ``data.cache`` asks."""
    if cache == "memory":
        return dataset.cache()
    if cache == "disk":
        pathlib.Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        return dataset.cache(str(cache_path))
    return dataset


def decoded_bytes(num_images, side):
    """Bytes that ``num_images`` decoded images take in a cache: float32 RGB, ``side`` px square."""
    return num_images * side * side * 3 * 4


def cached_shuffle_buffer(num_images, side):
    """Images a cached training split's reshuffle holds, at ``side`` px (see :data:`CACHED_SHUFFLE_BYTES`)."""
    return max(1, min(num_images, CACHED_SHUFFLE_BUFFER, CACHED_SHUFFLE_BYTES // decoded_bytes(1, side)))


def epoch_seed(seed, epoch):
    """The seed of one epoch's order and augmentation, derived from the run's seed."""
    return (seed * 1_000_003 + epoch) % (2 ** 31 - 1)


class EpochBatches:
    """The training split's batches, one dataset per epoch, each a pure function of (seed, epoch).

    tf.data's ``shuffle(reshuffle_each_iteration=True)`` draws the k-th epoch's order from
    how many times the dataset object has been iterated, and Keras' random layers from
    seed variables that advance with every call; a resumed process would restart both
    from zero. Here epoch k is ordered with its own seed, and every batch's random draws
    (augmentation, then ``transform``'s) are keyed by (epoch seed, batch index), so a
    resumed run sees exactly the batches an uninterrupted one does.

    The order: without a cache, the file names are permuted (a full shuffle that costs
    only strings) and images are decoded as they come; with ``balanced``, the file names
    are drawn class by class (data/sampling.py). With a cache, the images are decoded
    once, in an order fixed by the seed, and reshuffled in a window of
    :func:`cached_shuffle_buffer` images each epoch (a full shuffle would hold a second
    copy of every decoded image).

    Args:
        paths: the training split's image files.
        labels: their class indices.
        class_names: class folder names in label order.
        image_size: side of the square images the model takes.
        batch_size: images per batch.
        augmenter: a Keras augmenter (see data/augment.py) mapping (batch, load_size,
            load_size, 3) 0-255 images to (batch, image_size, image_size, 3), or None.
        transform: ``transform(images, labels, key) -> batch``, applied last to every
            batch, its random draws keyed by ``key`` (int64 (2,)); the recipes' one-hot
            labels, MixUp/CutMix and class weights (training/recipes.py). None: the
            batch stays (images, labels).
        cache: "none", "memory" or "disk" (decoded, resized images; before augmentation).
        cache_path: file prefix for the disk cache.
        seed: the run's seed.
        load_size: side to decode and resize to before augmentation (e.g. 256 for a
            random 224 crop); defaults to ``image_size``.
        balanced: draw every class equally often (data/sampling.py); images are decoded
            as drawn, so ``cache`` does not apply.

    Calling ``batches(epoch)`` returns a tf.data.Dataset of (images float32 (batch, size,
    size, 3) 0-255, labels int32 (batch,)), or whatever ``transform`` returns;
    ``len(batches)`` is the number of batches per epoch.

    Raises:
        UserError: unknown cache mode, an empty split, or (balanced) a class without images.
    """

    def __init__(self, paths, labels, class_names, image_size, batch_size, *, augmenter=None, transform=None,
                 cache="none", cache_path=None, seed=0, load_size=None, balanced=False):
        _check_cache_mode(cache)
        self.paths = np.array([str(path) for path in paths])
        self.labels = np.asarray(labels, np.int32).reshape(-1)
        if not len(self.paths):
            raise UserError("the training split holds no images")
        counts = np.bincount(self.labels, minlength=len(class_names))
        empty = [name for name, count in zip(class_names, counts) if not count]
        if balanced and empty:
            raise UserError(f"balanced sampling needs training images of every class; "
                            f"{', '.join(empty[:5])} ha{'s' if len(empty) == 1 else 've'} none")
        self.num_classes = len(class_names)
        self.batch_size, self.augmenter, self.transform = batch_size, augmenter, transform
        self.seed, self.balanced = seed, balanced
        self.load_size = load_size or image_size
        self.decoded = None
        if cache != "none" and not balanced:
            # Shared by every epoch's dataset: decoded once, in one fixed random order (a
            # window of the class-by-class file order would hold only a few classes).
            order = np.random.default_rng(seed).permutation(len(self.paths))
            self.decoded = _cached(self._decode(self.paths[order], self.labels[order]), cache, cache_path)

    def __len__(self):
        return -(-len(self.paths) // self.batch_size)

    def _decode(self, paths, labels):
        """(image float32 (load, load, 3) 0-255, label int32) of each file, by :func:`read_split`."""
        return read_split(paths, labels, self.load_size)

    def __call__(self, epoch):
        seed = epoch_seed(self.seed, epoch)
        if self.decoded is not None:
            examples = self.decoded.shuffle(cached_shuffle_buffer(len(self.paths), self.load_size), seed=seed,
                                            reshuffle_each_iteration=False)
        else:
            order = (balanced_order(self.labels, self.num_classes, seed) if self.balanced
                     else np.random.default_rng(seed).permutation(len(self.paths)))
            examples = self._decode(self.paths[order], self.labels[order])
        dataset = examples.batch(self.batch_size)
        if self.augmenter is not None or self.transform is not None:
            def finish(index, batch):
                images, labels = batch
                key = tf.stack([tf.constant(seed, tf.int64), index])  # (2,): this batch's randomness
                # Independent streams for the augmentation and the transform.
                augment_key, transform_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
                if self.augmenter is not None:
                    images = augment_batch(self.augmenter, images, augment_key)
                if self.transform is None:
                    return images, labels
                return self.transform(images, labels, transform_key)

            dataset = dataset.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)


def channel_statistics(dataset, max_batches=None):
    """Per-channel mean and standard deviation (0-1 units) of a batched 0-255 image dataset.

    Args:
        dataset: yields (images (batch, h, w, 3) 0-255, labels), without augmentation.
        max_batches: stop after this many batches (a sample suffices for big datasets).

    Returns:
        (mean, std): two lists of three floats.
    """
    # The sums are float64: float32 sums over millions of pixels drift by ~1e-3 in the std.
    # A batch is converted a slice of rows at a time, not whole: 16,384 x 3 float64 values
    # (384 KiB) stay in a core's cache, where a 64 x 224 x 224 batch (77 MB) would cross
    # memory twice; that is ~9x faster for the same result.
    chunk_rows = 16384
    ones = np.ones(chunk_rows)
    total = np.zeros(3)
    total_squares = np.zeros(3)
    count = 0
    for index, (images, _) in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        pixels = images.numpy().reshape(-1, 3)  # (batch * h * w, 3), 0-255
        for start in range(0, len(pixels), chunk_rows):
            chunk = pixels[start:start + chunk_rows].astype(np.float64)  # (<= chunk_rows, 3)
            weights = ones[:len(chunk)]
            total += weights @ chunk  # column sums, as a float64 BLAS matrix-vector product
            total_squares += weights @ np.square(chunk, out=chunk)
        count += len(pixels)
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(total_squares / count / 255.0 ** 2 - mean ** 2, 1e-12))
    return [round(float(value), 6) for value in mean], [round(float(value), 6) for value in std]
