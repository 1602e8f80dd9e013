"""Test-time augmentation (TTA): several views of every test image, their logits averaged.

Modes (``--tta`` and ``eval.tta``):

- ``none``: the image resized to the model's input size, as training saw it; for a run
  that trained on random crops of a larger resize (``augment.resize_crop``), the central
  crop of that resize (``data.pipeline.resize_for_model``).
- ``flip``: that view and its horizontal mirror (2 views).
- ``10crop``: the image resized to a larger side, cut into its four corners and its
  centre at the model's input size, plus the mirror of each (10 views), as in
  Krizhevsky et al. (2012). The larger side is ``augment.resize_crop`` when training
  cropped from it, else ``round(image_size * 256 / 224)`` (256 for a 224 px model).

Speed: the views are cut in the tf.data pipeline, in parallel and prefetched, and all the
views of a batch go through the model in ONE forward pass of shape
(views * batch, size, size, 3), so 10-crop costs about ten plain passes, not more. To
keep that pass the size of a training batch (and its memory), a batch holds
``batch_size // views`` images.
"""

import pathlib

import numpy as np
import tensorflow as tf

from keras_caltech.data.pipeline import images_checked_on_error, make_dataset
from keras_caltech.models.loading import model_image_size
from keras_caltech.progress import track

# mode -> number of views per image, for each of config.TTA_MODES. A config's eval.tta is
# one of them once loaded, and the commands check --tta as they parse it.
TTA_VIEWS = {"none": 1, "flip": 2, "10crop": 10}


def tta_load_size(mode, image_size, resize_crop=0):
    """The side images are resized to before the views are cut.

    Args:
        mode: a TTA mode.
        image_size: the model's input side.
        resize_crop: the config's ``augment.resize_crop`` (0: not set).

    Returns:
        ``image_size`` for ``none`` and ``flip`` (their views are already cut by the
        pipeline); for ``10crop`` the side training cropped from (``resize_crop``) when
        set and larger, else ``round(image_size * 256 / 224)``.
    """
    if mode != "10crop":
        return image_size
    if resize_crop > image_size:
        return resize_crop
    return round(image_size * 256 / 224)


def ten_crop(images, crop_size):
    """Cuts the four corners and the centre of each image, and their horizontal mirrors.

    Args:
        images: float tensor (batch, side, side, 3) with a static ``side >= crop_size``.
        crop_size: side of the square crops.

    Returns:
        Tensor (10, batch, crop_size, crop_size, 3). Views in order: top-left, top-right,
        bottom-left, bottom-right, centre, then the mirror of each in the same order. The
        centre starts at ``(side - crop_size) // 2`` (rounded down when the margin is odd).
    """
    side = images.shape[1]
    if side is None or images.shape[2] != side:
        raise ValueError(f"ten_crop needs square images of static size. Received shape: {images.shape}")
    if side < crop_size:
        raise ValueError(f"ten_crop: crop_size {crop_size} exceeds the image side {side}")
    far, centre = side - crop_size, (side - crop_size) // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]  # (top, left)
    crops = [images[:, top:top + crop_size, left:left + crop_size, :] for top, left in corners]
    crops += [tf.reverse(crop, axis=[2]) for crop in crops]  # axis 2: width
    return tf.stack(crops)  # (10, batch, crop, crop, 3)


def tta_views(images, mode, crop_size):
    """All views of a batch, stacked view-major for one forward pass.

    Args:
        images: float tensor (batch, side, side, 3): ``side`` is :func:`tta_load_size`.
        mode: a TTA mode.
        crop_size: the model's input side.

    Returns:
        Tensor (views * batch, crop_size, crop_size, 3); rows ``[v * batch, (v + 1) * batch)``
        are view ``v`` of every image, so the logits reshape to (views, batch, classes).
    """
    if mode == "none":
        return images
    if mode == "flip":
        return tf.concat([images, tf.reverse(images, axis=[2])], axis=0)  # (2 * batch, ...)
    crops = ten_crop(images, crop_size)  # (10, batch, crop, crop, 3)
    return tf.reshape(crops, (-1, crop_size, crop_size, images.shape[-1]))


def tta_dataset(paths, labels, image_size, mode, images_per_batch, resize_crop=0):
    """The tf.data pipeline of stacked views of a split's images.

    Decoding and resizing are the training pipeline's (:func:`make_dataset`); only the
    resize target differs for 10-crop.

    Args:
        paths: the images' files.
        labels: their class indices.
        image_size: the model's input side.
        mode: a TTA mode.
        images_per_batch: images per batch (each becomes ``TTA_VIEWS[mode]`` rows).
        resize_crop: the config's ``augment.resize_crop``.

    Returns:
        tf.data.Dataset of (views float32 (views * batch, image_size, image_size, 3) 0-255,
        labels int32 (batch,)), with attribute ``file_paths`` in dataset order.
    """
    load_size = tta_load_size(mode, image_size, resize_crop)
    # 10-crop cuts its own views from the whole load_size resize; the other modes take the
    # run's central crop of its resize_crop, as plain evaluation does.
    dataset = make_dataset(paths, labels, image_size, images_per_batch, load_size=load_size,
                           resize_crop=0 if mode == "10crop" else resize_crop)
    file_paths = dataset.file_paths
    dataset = dataset.map(lambda images, labels: (tta_views(images, mode, image_size), labels),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    dataset.file_paths = file_paths
    return dataset


def tta_forward(model, mode, image_size):
    """Returns a compiled ``views -> logits`` function averaging each image's views.

    The function maps (views * batch, image_size, image_size, 3) float32 to (batch,
    classes) float32. Its signature leaves the batch free, so it is traced once, not
    again for the last, smaller batch.
    """
    num_views = TTA_VIEWS[mode]

    @tf.function(input_signature=[tf.TensorSpec((None, image_size, image_size, 3), tf.float32)])
    def forward(views):
        logits = model(views, training=False)  # (views * batch, classes)
        logits = tf.reshape(logits, (num_views, -1, logits.shape[-1]))  # (views, batch, classes)
        return tf.reduce_mean(tf.cast(logits, tf.float32), axis=0)  # (batch, classes)

    return forward


def images_per_batch(batch_size, mode):
    """Images per evaluation batch, so one forward pass holds about ``batch_size`` views."""
    return max(1, batch_size // TTA_VIEWS[mode])


def predict_with_tta(model, paths, labels, mode, *, batch_size, image_size=None, resize_crop=0, progress=True):
    """Runs ``model`` over a split's images with test-time augmentation.

    Args:
        model: a classifier taking 0-255 RGB images and returning logits.
        paths: the images' files.
        labels: their class indices.
        mode: a TTA mode.
        batch_size: views per forward pass (images per batch is this divided by the views).
        image_size: the model's input side; default: read from the model
            (``models.loading.model_image_size``).
        resize_crop: the run config's ``augment.resize_crop``.
        progress: draw a progress line (count, images/s, time left) on stderr.

    Returns:
        (logits float32 (n, classes) averaged over views, labels int64 (n,),
        files: the images' paths (pathlib.Path), in the same order).

    Raises:
        UserError: no ``image_size`` given, and the model's input is not a fixed square; or
            an image changed since the scan (it is named).
    """
    image_size = image_size or model_image_size(model, "evaluation")
    dataset = tta_dataset(paths, labels, image_size, mode, images_per_batch(batch_size, mode), resize_crop)
    forward = tta_forward(model, mode, image_size)
    logits, seen = [], []
    with images_checked_on_error(paths, "restore it, or train a new run, which scans the dataset again and "
                                        "leaves it out"):
        for views, batch_labels in track(dataset, f"TTA {mode}", len(paths), size=lambda batch: len(batch[1]),
                                         enabled=progress):
            logits.append(forward(views).numpy())
            seen.append(batch_labels.numpy())
    files = [pathlib.Path(path) for path in dataset.file_paths]
    return np.concatenate(logits), np.concatenate(seen).astype(np.int64), files
