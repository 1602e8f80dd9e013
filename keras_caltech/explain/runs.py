"""A trained run as the explainers need it: its model, its class names, and the images
of a split read through the data pipeline, 32 at a time.

Images are read by ``data.pipeline.read_split``, the reader training and evaluation use,
and stay RGB 0-255: the model normalizes them itself.
"""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.config import load_config
from keras_caltech.data.pipeline import read_split
from keras_caltech.errors import UserError
from keras_caltech.explain.model_layers import image_shape
from keras_caltech.models.loading import load_model_safely, model_image_size
from keras_caltech.runs import RunFolder, open_run

BATCH_SIZE = 32  # images per forward/backward pass on every run-level path


@dataclasses.dataclass(frozen=True)
class ExplainedRun:
    """A run folder with its best model loaded.

    Attributes:
        folder: the :class:`RunFolder` (config, splits, dataset root).
        model: ``best.keras``, images 0-255 in, logits out.
        class_names: names in label order, one per logit.
    """

    folder: RunFolder
    model: keras.Model
    class_names: list

    @property
    def image_size(self):
        """Side of the square images the model takes."""
        return model_image_size(self.model, "explain.py")

    @property
    def resize_crop(self):
        """The run's ``augment.resize_crop``: its test view is a central crop of that resize."""
        return self.folder.config.augment.resize_crop


def check_class_names(class_names, num_classes, source):
    """Returns ``class_names`` as strings if it is a list of one name per logit.

    Raises:
        UserError: anything else; names ``source`` (the file they came from).
    """
    if not isinstance(class_names, list) or len(class_names) != num_classes:
        length = len(class_names) if isinstance(class_names, list) else "-"
        raise UserError(f"{source} must hold a list of {num_classes} class names, one per "
                        f"model output. Received {type(class_names).__name__} of length {length}")
    return [str(name) for name in class_names]


def resize_crop_beside(path):
    """The ``augment.resize_crop`` of the run a ``.keras`` file sits in (its ``config.yaml``), else 0."""
    config_path = Path(path).with_name("config.yaml")
    return load_config(config_path).augment.resize_crop if config_path.is_file() else 0


def load_model_file(path):
    """Loads a ``.keras`` model and the ``class_names.json`` beside it, if any.

    Returns:
        (model, class names as a list or None).

    Raises:
        UserError: see :func:`load_model_safely`; a damaged ``class_names.json``.
    """
    model = load_model_safely(path)
    names_path = Path(path).with_name("class_names.json")
    if not names_path.is_file():
        return model, None
    try:
        class_names = json.loads(names_path.read_text())
    except ValueError as error:
        raise UserError(f"{names_path} is not valid JSON: {error}") from None
    return model, check_class_names(class_names, model.outputs[0].shape[-1], names_path)


def open_explained_run(path, data=None):
    """Opens a run folder written by ``train.py`` and loads its ``best.keras``.

    ``data``: the dataset folder, if it moved since training (see ``open_run``).

    Raises:
        UserError: the folder is missing, holds no ``best.keras``, or misses a file the
            run needs (config, splits, class names); the model has no fixed square input.
    """
    folder = open_run(path, data, need_model=True)
    model = load_model_safely(folder.model_path)
    model_image_size(model, "explain.py")  # fails now on a model the pipeline cannot feed
    class_names = check_class_names(folder.class_names, model.outputs[0].shape[-1],
                                    folder.path / "class_names.json")
    return ExplainedRun(folder=folder, model=model, class_names=class_names)


def split_dataset(run, split="test", indices=None, batch_size=BATCH_SIZE):
    """The images of a split in batches, read by the pipeline's one split reader.

    Args:
        run: an :class:`ExplainedRun`.
        split: "train", "val" or "test".
        indices: positions in the split's file list to read, in this order; None: all.
        batch_size: images per batch.

    Returns:
        A tf.data.Dataset of (images float32 (batch, size, size, 3) RGB 0-255,
        labels int32 (batch,)), in the order of ``indices``.

    Raises:
        UserError: the split is empty, or its images are gone.
    """
    paths, labels = run.folder.split_files(split, required=True)
    indices = np.arange(len(paths)) if indices is None else np.asarray(indices, int)
    dataset = read_split([paths[index] for index in indices], np.asarray(labels, np.int32)[indices],
                         run.image_size, run.resize_crop)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_split_images(run, split="test", indices=None):
    """Like :func:`split_dataset`, but all at once as NumPy arrays (images, labels)."""
    batches = list(split_dataset(run, split, indices).as_numpy_iterator())
    return (np.concatenate([images for images, _ in batches]),
            np.concatenate([labels for _, labels in batches]))


def predict_split(run, split="test"):
    """Runs the model over a whole split.

    Returns:
        (probabilities float32 (n, classes), labels int (n,)) in the split's file order.
    """
    forward = CompiledForward(run.model)
    probabilities, labels = [], []
    for images, batch_labels in split_dataset(run, split):
        probabilities.append(tf.nn.softmax(forward(images)).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(probabilities), np.concatenate(labels)


class CompiledForward:
    """The model's inference pass, traced once for every batch size.

    Run-level paths call the model hundreds of times (deletion and insertion curves
    above all); an eager call costs more than the computation at 32-64 px. Callable as
    ``forward(images, training=False)``, like the model itself.
    """

    def __init__(self, model):
        spec = tf.TensorSpec((None, *image_shape(model)), tf.float32)
        self._call = tf.function(lambda images: model(images, training=False), input_signature=[spec])

    def __call__(self, images, training=False):
        return self._call(tf.convert_to_tensor(images, tf.float32))
