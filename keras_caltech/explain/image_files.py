"""From files on disk to explanation figures: what ``explain.py --image`` calls.

A saved model (``.keras``) and images in, PNG figures out, one short line per figure.
Images reach the model exactly as in evaluation (``data.pipeline.decode_and_resize``);
figures show the decoded original, un-normalized and at its own size (only the part the
model sees, for a run evaluated on a central crop), with the heatmap stretched back
onto it.
"""

import dataclasses
import difflib
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_caltech.data.pipeline import crop_window, decode, decode_and_resize
from keras_caltech.errors import UserError
from keras_caltech.explain.gradcam import GradCam, GradCamPlusPlus, ScoreCam
from keras_caltech.explain.guided import GuidedBackprop, GuidedGradCam
from keras_caltech.explain.views import feature_maps, top_activating_patches
from keras_caltech.models.loading import model_image_size
from keras_caltech.plotting import (explanation_figure, feature_map_figure, gradient_figure,
                                    patches_figure, prediction_title, save_figure)

CAM_METHODS = {"gradcam": GradCam, "gradcam++": GradCamPlusPlus, "scorecam": ScoreCam}
METHODS = (*CAM_METHODS, "guided-backprop", "guided-gradcam", "feature-maps", "patches")
TOP_K = 5  # classes printed per image


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One image file, read twice over: as the model takes it and as it looks.

    Attributes:
        path: the file.
        pixels: (size, size, 3) float32 RGB 0-255, resized as in evaluation.
        original: (height, width, 3) uint8 RGB, the decoded file (the part of it the
            model sees), for figures.
    """

    path: Path
    pixels: np.ndarray
    original: np.ndarray


def read_image(path, image_size, resize_crop=0):
    """Reads an image file with the training pipeline's decoder.

    Args:
        path: a JPEG, PNG, GIF (first frame) or BMP file.
        image_size: side of the model's square input.
        resize_crop: the run's ``augment.resize_crop`` (see ``pipeline.resize_for_model``).

    Returns:
        An :class:`ImageFile`.

    Raises:
        UserError: the path is missing, a folder, empty, or not a decodable image.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--image {path} is a folder: pass image files, e.g. {path / '*.jpg'}")
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"image file {path} is empty (0 bytes)")
    encoded = tf.io.read_file(str(path))
    try:
        pixels = decode_and_resize(encoded, image_size, resize_crop).numpy()
        original = decode(encoded).numpy()  # (h, w, 3) uint8
    except tf.errors.InvalidArgumentError:
        raise UserError(f"cannot decode {path} as an image (JPEG, PNG, GIF or BMP)") from None
    x0, y0, x1, y1 = np.round(crop_window(original.shape[1], original.shape[0], image_size, resize_crop)).astype(int)
    return ImageFile(path=path, pixels=pixels, original=original[y0:y1, x0:x1])


def _bare_name(folder_name):
    """``ak47`` for the Caltech folder name ``001.ak47``; other names unchanged."""
    number, dot, rest = folder_name.partition(".")
    return rest if dot and number.isdigit() else folder_name


def resolve_class(value, class_names, num_classes):
    """Turns ``--class`` into a class index; None stays None.

    Args:
        value: an index, a class name, or a Caltech name without its number
            (``ak47`` for ``001.ak47``).
        class_names: the names in label order, or None.
        num_classes: the model's number of logits.

    Raises:
        UserError: an index out of range, or an unknown name (the closest names are
            suggested).
    """
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        index = int(value)
        if not 0 <= index < num_classes:
            raise UserError(f"class index {index} is out of range: the model has {num_classes} "
                            f"classes (0 to {num_classes - 1})")
        return index
    if class_names is None:
        raise UserError(f"class {value!r} given by name, but there is no class_names.json beside "
                        f"the model: give an index from 0 to {num_classes - 1}")
    if value in class_names:
        return class_names.index(value)
    bare = [_bare_name(name) for name in class_names]
    if bare.count(value) == 1:
        return bare.index(value)
    # Close to a full name or to a bare one; suggested by their full names.
    candidates = {**{name: name for name in class_names},
                  **{short: name for short, name in zip(bare, class_names)}}
    close = dict.fromkeys(candidates[match] for match in
                          difflib.get_close_matches(value, list(candidates), n=3))
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown class {value!r}.{hint} See class_names.json for the valid names.")


@dataclasses.dataclass(frozen=True)
class Written:
    """One file written: where, a one-line description, and optional detail lines."""

    path: Path
    summary: str
    details: tuple = ()


def class_name(index, class_names):
    """The name of class ``index``, or ``class N`` without names."""
    return class_names[index] if class_names else f"class {index}"


def top_classes(probabilities, class_names, k=TOP_K):
    """``name 87.0%, name 9.1%, ...`` for the k most probable classes."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return ", ".join(f"{class_name(int(index), class_names)} {probabilities[index]:.1%}"
                     for index in order)


def explain_images(model, image_paths, method="gradcam", class_index=None, layer_name=None,
                   channel=None, class_names=None, output_dir="explanations", resize_crop=0):
    """Explains images with one method and writes a figure per image (or per layer).

    Args:
        model: a loaded model, images 0-255 in, logits out.
        image_paths: image files; ``patches`` scans them all together.
        method: one of :data:`METHODS`.
        class_index: the class to explain; None: each image's predicted class.
        layer_name: the 4-D layer (default: the model's declared/last 4-D layer).
        channel: ``patches`` only: the channel of ``layer_name`` to maximize.
        class_names: names of the classes, or None.
        output_dir: folder for the PNG files.
        resize_crop: the run's ``augment.resize_crop`` (see ``pipeline.resize_for_model``).

    Returns:
        A list of :class:`Written`.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}. Valid methods: {', '.join(METHODS)}")
    size = model_image_size(model, "explain.py")
    files = [read_image(path, size, resize_crop) for path in image_paths]
    output_dir = Path(output_dir)
    if method == "patches":
        images = np.stack([file.pixels for file in files])  # (n, size, size, 3)
        return [write_patches(model, images, len(files), class_index, layer_name, channel,
                              class_names, output_dir)]
    if method == "feature-maps":
        return _feature_maps(model, files, layer_name, output_dir)
    return _per_image(model, files, method, class_index, layer_name, class_names, output_dir)


def write_patches(model, batches, num_images, class_index, layer_name, channel, class_names,
                  output_dir):
    """One grid of the strongest patches of a channel, or of whole images for a class.

    Args:
        batches: (n, size, size, 3) images, or an iterable of (images, labels) batches
            such as a run's test split.
        num_images: how many images ``batches`` holds, for the summary line.
    """
    if channel is not None:
        unit = f"channel {channel} of {layer_name or 'the default layer'}"
        file_name = f"patches_channel{channel}.png"
        class_index = None
    elif class_index is not None:
        unit, file_name = class_name(class_index, class_names), f"patches_class{class_index}.png"
    else:
        raise UserError("--method patches needs a unit: --class NAME|INDEX, or --layer and --channel")
    patches = top_activating_patches(model, batches, layer_name=layer_name, channel=channel,
                                     class_index=class_index, top_k=9,
                                     one_per_image=num_images > 1)
    path = save_figure(patches_figure(patches, f"top patches: {unit}"), output_dir / file_name)
    return Written(path, f"{len(patches)} patches for {unit} from {num_images} image(s)")


def _feature_maps(model, files, layer_name, output_dir):
    """One grid per convolution layer (or the asked layer) per image."""
    written = []
    for file in files:
        maps = feature_maps(model, file.pixels, None if layer_name is None else [layer_name])
        for layer, activations in maps.items():
            name = f"{file.path.stem}_feature-maps_{layer.replace('/', '__')}.png"
            path = save_figure(feature_map_figure(activations, layer), output_dir / name)
            written.append(Written(path, f"{file.path.stem}: {layer} {activations.shape}"))
    return written


def _per_image(model, files, method, class_index, layer_name, class_names, output_dir):
    """A CAM (image | heatmap | overlay) or gradient figure per image, on the original image."""
    images = np.stack([file.pixels for file in files])  # (n, size, size, 3)
    heatmaps = gradients = None
    if method in CAM_METHODS:
        explainer = CAM_METHODS[method](model, layer_name)
        result = explainer(images, class_index)
        heatmaps, method_name = result.heatmaps, explainer.method
        probabilities, classes, empty = result.probabilities, result.class_indices, result.empty
    elif method == "guided-gradcam":
        gradients, result = GuidedGradCam(model, layer_name)(images, class_index)
        method_name = "guided Grad-CAM"
        probabilities, classes, empty = result.probabilities, result.class_indices, result.empty
    else:  # guided-backprop: no layer needed, only the prediction for the title
        probabilities = tf.nn.softmax(model(images, training=False)).numpy()
        classes = probabilities.argmax(-1) if class_index is None else np.full(len(images), class_index)
        gradients = GuidedBackprop(model)(images, classes)
        method_name, empty = "guided backpropagation", np.zeros(len(images), bool)
    written = []
    for item, file in enumerate(files):
        explained = int(classes[item])
        title = prediction_title(probabilities[item], explained, class_names, method_name)
        if heatmaps is not None:
            figure = explanation_figure(file.original, heatmaps[item], title, bool(empty[item]))
        else:
            # The gradient is per model-input pixel: stretched back to the original's shape.
            height, width = file.original.shape[:2]
            stretched = tf.image.resize(gradients[item], (height, width), method="bilinear").numpy()
            figure = gradient_figure(file.original, stretched, title)
        path = save_figure(figure, output_dir / f"{file.path.stem}_{method}.png")
        note = " (empty map: the image argues against this class)" if empty[item] else ""
        predicted = int(np.argmax(probabilities[item]))
        written.append(Written(
            path, f"{file.path.stem}: predicted {class_name(predicted, class_names)} "
                  f"({probabilities[item][predicted]:.1%}), explained "
                  f"{class_name(explained, class_names)}{note}",
            (f"top-{min(TOP_K, len(probabilities[item]))}: "
             f"{top_classes(probabilities[item], class_names)}",)))
    return written
