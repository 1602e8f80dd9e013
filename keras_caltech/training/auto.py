"""Settings left to the data: ``data.image_size: 0`` and ``train.epochs: 0`` mean "choose for me".

A user's own folder can hold 28 px scans or 4000 px photographs, forty images or forty
thousand, so the default recipe (configs/default.yaml) leaves two numbers to the data
and says what it chose and why in the first lines a run prints. The chosen values are
written into the run's config.yaml, so a resumed run keeps them.

- Image size: the median shorter side of (a sample of) the training images, rounded
  down to a multiple of 16, between :data:`MIN_AUTO_IMAGE_SIZE` and
  :data:`MAX_AUTO_IMAGE_SIZE`, and never below the model's own minimum. Upsampling
  small images adds compute and no detail; the cap keeps an epoch affordable on a CPU
  (set ``data.image_size`` above it on a GPU).
- Cache (``data.cache: auto``): decoded images held in memory when the splits that
  are cached (validation, and training unless it is sampled class-balanced) fit in
  :data:`MEMORY_CACHE_BYTES` at the size they are decoded to, else on disk in the run
  folder when they take at most :data:`DISK_CACHE_SHARE` of its free space, else none.
- Epochs: enough for about :data:`TARGET_STEPS` optimizer steps, between
  :data:`MIN_AUTO_EPOCHS` and :data:`MAX_AUTO_EPOCHS`: a small dataset gets more passes,
  a large one fewer, and the one-cycle schedule stretches over whatever is chosen.
"""

import dataclasses
import math
import pathlib
import random
import shutil

import numpy as np
import tensorflow as tf

from keras_caltech.config import AUTO, AUTO_CACHE
from keras_caltech.data.pipeline import decoded_bytes
from keras_caltech.data.scan import header_size

MEMORY_CACHE_BYTES = 2 * 1024**3  # the float32 images of the cached splits, resized
DISK_CACHE_SHARE = 0.5  # of the free space a disk cache may take: the rest stays the user's
MIN_AUTO_IMAGE_SIZE = 32
MAX_AUTO_IMAGE_SIZE = 128
SIZE_SAMPLE = 200  # image headers read to find the typical size: enough for a stable median
TARGET_STEPS = 3000
MIN_AUTO_EPOCHS = 15
MAX_AUTO_EPOCHS = 100


def stand_in(config, default_image_size):
    """``config`` with typical values in place of auto ones, to check its settings before the data is read.

    Args:
        config: a Config.
        default_image_size: the size to check an auto image size with (the model's published one).

    Returns:
        The Config with auto image size, epochs and cache replaced; never trained with.
    """
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
    """The median shorter side of a sample of images, read from their headers only.

    No image is decoded, so a file the scan has not checked cannot cost memory. Files
    that cannot be read, and formats whose header is not read (``scan.header_size``),
    are left out.

    Args:
        paths: image files.
        seed: seed of the sample (:data:`SIZE_SAMPLE` files at most).

    Returns:
        The median in pixels (int), or None when no size could be read.
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


def auto_image_size(paths, default_image_size, min_image_size=1):
    """The image size for ``data.image_size: 0`` (see the module docstring).

    Args:
        paths: the training images.
        default_image_size: the model's published size, used when no size can be read.
        min_image_size: the model's smallest input.

    Returns:
        (size in pixels, the reason in words).
    """
    side = typical_image_side(paths)
    if side is None:
        size, why = min(default_image_size, MAX_AUTO_IMAGE_SIZE), "no image size could be read from the files' headers"
    else:
        size = min(max(side // 16 * 16, MIN_AUTO_IMAGE_SIZE), MAX_AUTO_IMAGE_SIZE)
        bound = (f", capped at {MAX_AUTO_IMAGE_SIZE} for a CPU: set data.image_size for more"
                 if size == MAX_AUTO_IMAGE_SIZE and side >= MAX_AUTO_IMAGE_SIZE + 16 else "")
        why = f"median image side {side} px{bound}"
    if size < min_image_size:
        size, why = min_image_size, why + f"; raised to the model's minimum, {min_image_size} px"
    return size, why


def auto_epochs(num_train_images, batch_size):
    """The epoch count for ``train.epochs: 0`` (see the module docstring).

    Returns:
        (epochs, the reason in words).
    """
    steps_per_epoch = max(1, math.ceil(num_train_images / batch_size))
    epochs = min(max(math.ceil(TARGET_STEPS / steps_per_epoch), MIN_AUTO_EPOCHS), MAX_AUTO_EPOCHS)
    return epochs, (f"{num_train_images:,} training images, {steps_per_epoch} steps per epoch: "
                    f"about {epochs * steps_per_epoch:,} steps")


def auto_cache(num_images, image_size, free_disk_bytes=0):
    """The cache mode for ``data.cache: auto``: memory when the decoded images fit, else disk when it has room.

    Without a cache every epoch decodes every image again: 1-2 ms for a few-hundred-pixel
    JPEG, but about 60 ms for a 12-megapixel photograph (one core of an Intel Xeon),
    several times a small model's training step per image. A disk cache decodes once and
    then reads resized images back; it takes at most :data:`DISK_CACHE_SHARE` of the
    free space, and the run removes it when training ends.

    Args:
        num_images: images the cache would hold.
        image_size: the side they are decoded to.
        free_disk_bytes: free space where the run folder will be (0: no disk cache).

    Returns:
        ("memory", "disk" or "none", the reason in words).
    """
    needed = decoded_bytes(num_images, image_size)
    if needed <= MEMORY_CACHE_BYTES:
        return "memory", f"{needed / 1024**2:,.0f} MB of decoded images"
    too_big = f"{needed / 1024**3:.1f} GB of decoded images is more than {MEMORY_CACHE_BYTES / 1024**3:.0f} GB"
    if needed <= DISK_CACHE_SHARE * free_disk_bytes:
        return "disk", (f"{too_big}; kept in the run folder (of {free_disk_bytes / 1024**3:,.0f} GB free) "
                        "until training ends, so later epochs do not decode again")
    return "none", (f"{too_big} and more than {DISK_CACHE_SHARE:.0%} of the {free_disk_bytes / 1024**3:,.1f} GB "
                    "free for the run folder: every epoch decodes the images again")


def free_bytes(folder):
    """Free space on the disk that holds, or will hold, ``folder`` (its nearest existing parent's)."""
    folder = pathlib.Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0  # cannot tell: no disk cache


def resolve_auto(config, train_paths, num_val_images, entry, log=print, run_dir="."):
    """Returns ``config`` with its auto image size, epochs and cache chosen from the data.

    Args:
        config: a Config whose data.image_size or train.epochs may be :data:`AUTO`, and
            data.cache :data:`AUTO_CACHE`.
        train_paths: paths of the training split's images.
        num_val_images: images in the validation split.
        entry: the model's registry entry (its published and smallest input sizes).
        log: where the choices and their reasons go.
        run_dir: the run folder, made or not yet: a disk cache goes in it.

    Returns:
        The Config with image size, epochs and cache set (unchanged when none was auto).
    """
    data, train = config.data, config.train
    if data.image_size == AUTO:
        size, why = auto_image_size(train_paths, entry.default_image_size, entry.min_image_size)
        log(f"image size {size} px, chosen from the data ({why})")
        data = dataclasses.replace(data, image_size=size)
    if train.epochs == AUTO:
        epochs, why = auto_epochs(len(train_paths), data.batch_size)
        log(f"{epochs} epochs, chosen from the data ({why})")
        train = dataclasses.replace(train, epochs=epochs)
    if data.cache == AUTO_CACHE:
        # The training split is cached at its decoding size, larger when a crop follows
        # (augment.load_size), and not at all when it is sampled class-balanced.
        cached = num_val_images + (0 if data.balanced_sampling else len(train_paths))
        cache, why = auto_cache(cached, max(config.augment.resize_crop, data.image_size), free_bytes(run_dir))
        log(f"data.cache {cache}, chosen from the data ({why})")
        data = dataclasses.replace(data, cache=cache)
    return dataclasses.replace(config, data=data, train=train)


def listed_files(root, class_names, extensions):
    """The (relative path, label) of each image in the class folders, by extension alone (no decoding).

    The same shape as ``scan_dataset``'s files, for a dry run, which never decodes.
    """
    root = pathlib.Path(root)
    return [(f"{name}/{path.name}", label) for label, name in enumerate(class_names)
            for path in sorted((root / name).iterdir()) if path.suffix.lower() in extensions and path.is_file()]
