"""Settings left to the data: ``data.image_size: 0`` and ``train.epochs: 0`` mean "choose for me".

A user's own folder can hold 28 px scans or 4000 px photographs, forty images or forty
thousand, so the default recipe (configs/default.yaml) leaves two numbers to the data
and says what it chose and why in the first lines a run prints. The chosen values are
written into the run's config.yaml, so a resumed run keeps them.

- Image size: the median shorter side of (a sample of) the training images, rounded
  down to a multiple of 16, between :data:`MIN_AUTO_IMAGE_SIZE` and
  :data:`MAX_AUTO_IMAGE_SIZE`. Upsampling small images adds compute and no detail; the
  cap keeps an epoch affordable on a CPU (set ``data.image_size`` above it on a GPU).
- Cache (``data.cache: auto``): decoded images held in memory when the training and
  validation splits fit in :data:`MEMORY_CACHE_BYTES` at the chosen size, else none.
- Epochs: enough for about :data:`TARGET_STEPS` optimizer steps, between
  :data:`MIN_AUTO_EPOCHS` and :data:`MAX_AUTO_EPOCHS`: a small dataset gets more passes,
  a large one fewer, and the one-cycle schedule stretches over whatever is chosen.
"""

import dataclasses
import math
import pathlib
import random

import numpy as np
import tensorflow as tf

from keras_caltech.data.scan import header_size
from keras_caltech.errors import UserError

AUTO = 0
AUTO_CACHE = "auto"
MEMORY_CACHE_BYTES = 2 * 1024**3  # the float32 images of the cached splits, resized
MIN_AUTO_IMAGE_SIZE = 32
MAX_AUTO_IMAGE_SIZE = 128
SIZE_SAMPLE = 200  # image headers read to find the typical size: enough for a stable median
TARGET_STEPS = 3000
MIN_AUTO_EPOCHS = 15
MAX_AUTO_EPOCHS = 100


def check_auto(config):
    """Raises UserError for settings that need an explicit image size or epoch count."""
    train = config.train
    if (train.progressive_sizes or train.progressive_epochs) and AUTO in (config.data.image_size, train.epochs):
        raise UserError("progressive resizing (train.progressive_sizes) needs an explicit data.image_size and "
                        "train.epochs; they are 0 (chosen from the data). Set both, e.g. "
                        "--set data.image_size=128 --set train.epochs=30")


def stand_in(config, default_image_size):
    """``config`` with typical values in place of auto ones, to check settings before the data is read."""
    data = config.data
    if data.image_size == AUTO:
        data = dataclasses.replace(data, image_size=default_image_size)
    if data.cache == AUTO_CACHE:
        data = dataclasses.replace(data, cache="none")
    train = config.train
    if train.epochs == AUTO:
        train = dataclasses.replace(train, epochs=MIN_AUTO_EPOCHS)
    return dataclasses.replace(config, data=data, train=train)


def typical_image_side(paths, seed=0):
    """The median shorter side in pixels of a sample of ``paths``, read from headers only; None if none is known.

    Headers only: no image is decoded, so a file the scan has not checked cannot cost
    memory. Formats whose header is not read (see ``scan.header_size``) are left out.
    """
    paths = list(paths)
    sample = random.Random(seed).sample(paths, min(SIZE_SAMPLE, len(paths)))
    sides = []
    for path in sample:
        try:
            size = header_size(tf.io.read_file(str(path)))
        except (tf.errors.OpError, OSError):
            continue
        if size is not None and min(size) > 0:
            sides.append(min(size))
    return int(np.median(sides)) if sides else None


def auto_image_size(paths, default_image_size):
    """Returns (image size, why) for ``data.image_size: 0``; see the module docstring."""
    side = typical_image_side(paths)
    if side is None:
        size = min(default_image_size, MAX_AUTO_IMAGE_SIZE)
        return size, "no image size could be read from the files' headers"
    size = min(max(side // 16 * 16, MIN_AUTO_IMAGE_SIZE), MAX_AUTO_IMAGE_SIZE)
    bound = (f", capped at {MAX_AUTO_IMAGE_SIZE} for a CPU: set data.image_size for more"
             if size == MAX_AUTO_IMAGE_SIZE and side >= MAX_AUTO_IMAGE_SIZE + 16 else "")
    return size, f"median image side {side} px{bound}"


def auto_epochs(num_train_images, batch_size):
    """Returns (epochs, why) for ``train.epochs: 0``; see the module docstring."""
    steps_per_epoch = max(1, math.ceil(num_train_images / batch_size))
    epochs = min(max(math.ceil(TARGET_STEPS / steps_per_epoch), MIN_AUTO_EPOCHS), MAX_AUTO_EPOCHS)
    return epochs, (f"{num_train_images:,} training images, {steps_per_epoch} steps per epoch: "
                    f"about {epochs * steps_per_epoch:,} steps")


def auto_cache(num_images, image_size):
    """Returns (cache mode, why) for ``data.cache: auto``: memory when ``num_images`` fit."""
    needed = num_images * image_size * image_size * 3 * 4  # float32 RGB
    if needed <= MEMORY_CACHE_BYTES:
        return "memory", f"{needed / 1024**2:,.0f} MB of decoded images"
    return "none", (f"{needed / 1024**3:.1f} GB of decoded images is more than "
                    f"{MEMORY_CACHE_BYTES / 1024**3:.0f} GB; data.cache=disk keeps them on disk")


def resolve_auto(config, train_paths, default_image_size, num_cached_images=0, log=print):
    """Returns ``config`` with its auto image size and epochs chosen from the training images.

    Args:
        config: a Config whose data.image_size or train.epochs may be :data:`AUTO`.
        train_paths: paths of the training images.
        num_cached_images: images a cache would hold (training and validation splits).
        default_image_size: the model's published size, used when no size can be read.
        log: where the choices and their reasons go.

    Returns:
        The Config with image size, epochs and cache set (unchanged when none was auto).
    """
    check_auto(config)
    data, train = config.data, config.train
    if data.image_size == AUTO:
        size, why = auto_image_size(train_paths, default_image_size)
        log(f"image size {size} px, chosen from the data ({why})")
        data = dataclasses.replace(data, image_size=size)
    if train.epochs == AUTO:
        epochs, why = auto_epochs(len(train_paths), data.batch_size)
        log(f"{epochs} epochs, chosen from the data ({why})")
        train = dataclasses.replace(train, epochs=epochs)
    if data.cache == AUTO_CACHE:
        cache, why = auto_cache(num_cached_images, data.image_size)
        log(f"data.cache {cache}, chosen from the data ({why})")
        data = dataclasses.replace(data, cache=cache)
    return dataclasses.replace(config, data=data, train=train)


def listed_images(root, class_names, extensions):
    """The image files of the class folders under ``root``, by extension alone (no decoding)."""
    return [path for name in class_names for path in sorted((pathlib.Path(root) / name).iterdir())
            if path.suffix.lower() in extensions and path.is_file()]
