"""From files on disk to explanation figures: what ``explain.py --image`` calls.

A saved model (``.keras``) and images in, PNG figures out, one short line per figure.
Images reach the model exactly as in evaluation (``data.pipeline.decode_and_resize``);
figures show the decoded original, un-normalized and at its own size (only the part the
model sees, for a run evaluated on a central crop), with the heatmap stretched back
onto it.
"""

import dataclasses
import difflib
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_caltech.data.pipeline import crop_window, decode, decode_and_resize
from keras_caltech.data.pixel_limit import check_pixels
from keras_caltech.errors import UserError
from keras_caltech.explain.gradcam import GradCam, GradCamPlusPlus, ScoreCam
from keras_caltech.explain.guided import GuidedBackprop, GuidedChannelBackprop, GuidedGradCam
from keras_caltech.explain.model_layers import resolve_spatial_layer
from keras_caltech.explain.receptive_field import receptive_field
from keras_caltech.explain.views import feature_maps, top_activating_patches
from keras_caltech.models.loading import model_image_size
from keras_caltech.plotting.explanations import (downscale, explanation_figure, feature_map_figure,
                                                 gradient_figure, patches_figure, prediction_title)
from keras_caltech.plotting.figures import save_figure

CAM_METHODS = {"gradcam": GradCam, "gradcam++": GradCamPlusPlus, "scorecam": ScoreCam}
METHODS = (*CAM_METHODS, "guided-backprop", "guided-gradcam", "feature-maps", "patches")
CHANNEL_METHODS = ("patches", "guided-backprop")  # the methods --channel applies to
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
    check_pixels(encoded, str(path))  # from the header, before a decode could take gigabytes
    try:
        pixels = decode_and_resize(encoded, image_size, resize_crop).numpy()
        original = decode(encoded).numpy()  # (h, w, 3) uint8
    except tf.errors.InvalidArgumentError:
        raise UserError(f"cannot decode {path} as an image (JPEG, PNG, GIF or BMP)") from None
    x0, y0, x1, y1 = np.round(crop_window(original.shape[1], original.shape[0], image_size, resize_crop)).astype(int)
    return ImageFile(path=path, pixels=pixels, original=downscale(original[y0:y1, x0:x1]))


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
        channel: ``patches`` and ``guided-backprop``: the channel of ``layer_name`` to
            follow instead of a class (see :func:`check_unit_choice`).
        class_names: names of the classes, or None.
        output_dir: folder for the PNG files.
        resize_crop: the run's ``augment.resize_crop`` (see ``pipeline.resize_for_model``).

    Returns:
        A list of :class:`Written`.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}. Valid methods: {', '.join(METHODS)}")
    check_unit_choice(method, class_index is not None, layer_name is not None, channel)
    size = model_image_size(model, "explain.py")
    files = [read_image(path, size, resize_crop) for path in image_paths]
    output_dir = Path(output_dir)
    if method == "patches":
        images = np.stack([file.pixels for file in files])  # (n, size, size, 3)
        return [write_patches(model, images, len(files), class_index, layer_name, channel,
                              class_names, output_dir)]
    if method == "feature-maps":
        return _feature_maps(model, files, layer_name, output_dir)
    if method == "guided-backprop" and channel is not None:
        return _guided_channel(model, files, layer_name, channel, class_names, output_dir)
    return _per_image(model, files, method, class_index, layer_name, class_names, output_dir)


def write_patches(model, batches, num_images, class_index, layer_name, channel, class_names,
                  output_dir):
    """One grid of the strongest patches of a channel or of a class logit.

    A channel's patches are the receptive fields of its strongest units; a class's are
    the receptive fields, in ``layer_name``, of the locations with the most evidence for
    the class in the images with the highest logits (see ``views.top_activating_patches``).

    Args:
        batches: (n, size, size, 3) images, or an iterable of (images, labels) batches
            such as a run's test split.
        num_images: how many images ``batches`` holds, for the summary line.
    """
    if channel is None and class_index is None:
        raise UserError("--method patches needs a unit: --class NAME|INDEX, or --layer and --channel")
    layer_name = resolve_spatial_layer(model, layer_name)
    layer_part = re.sub(r"[^A-Za-z0-9_.-]", "_", layer_name)  # the layer in the name: another layer's stays
    if channel is not None:
        unit, file_name = f"channel {channel} of {layer_name}", f"patches_{layer_part}_channel{channel}.png"
    else:
        unit, file_name = class_name(class_index, class_names), f"patches_{layer_part}_class{class_index}.png"
    patches = top_activating_patches(model, batches, layer_name=layer_name, channel=channel,
                                     class_index=class_index, top_k=9,
                                     one_per_image=num_images > 1)
    size = receptive_field(model, layer_name).size
    if channel is None:
        title = f"top patches: {unit} (score: logit)\n{size} px field in {layer_name} at the peak evidence"
    else:
        title = f"top patches: {unit}\n{size} px receptive fields"
    path = save_figure(patches_figure(patches, title), output_dir / file_name)
    return Written(path, f"{len(patches)} patches for {unit} from {num_images} image(s), "
                         f"each the {size} px receptive field of a unit of {layer_name}")


def check_unit_choice(method, class_given, layer_given, channel):
    """Refuses unit choices a method cannot follow (before anything is loaded).

    ``--channel`` picks one channel of ``--layer`` for ``patches`` and
    ``guided-backprop``; ``--class`` picks a class logit. One unit at a time.

    Raises:
        UserError: ``channel`` with another method, with a class, or negative; or
            ``guided-backprop`` given a layer but no channel.
    """
    if channel is None:
        if method == "guided-backprop" and layer_given:
            raise UserError("--method guided-backprop follows a class logit back to the image; "
                            "to follow a neuron of --layer instead, add --channel C")
        return
    if method not in CHANNEL_METHODS:
        raise UserError(f"--channel picks a neuron for --method {' or '.join(CHANNEL_METHODS)}. "
                        f"Received: --method {method}")
    if class_given:
        raise UserError("give --class (a class logit) or --channel (a channel of --layer), not both")
    if channel < 0:
        raise UserError(f"--channel takes a channel index >= 0. Received: {channel}")


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


def _explain_batch(model, images, method, class_index, layer_name):
    """Runs a class explainer on a batch.

    Returns:
        (heatmaps (n, h', w') or None, gradients (n, h, w, 3) or None, probabilities
        (n, classes), explained classes (n,), empty maps (n,) bool, the method's name).
    """
    if method in CAM_METHODS:
        explainer = CAM_METHODS[method](model, layer_name)
        result = explainer(images, class_index)
        return (result.heatmaps, None, result.probabilities, result.class_indices, result.empty,
                explainer.method)
    if method == "guided-gradcam":
        gradients, result = GuidedGradCam(model, layer_name)(images, class_index)
        return (None, gradients, result.probabilities, result.class_indices, result.empty,
                "guided Grad-CAM")
    # guided-backprop: no layer needed, only the prediction for the title
    probabilities = tf.nn.softmax(model(images, training=False)).numpy()
    classes = probabilities.argmax(-1) if class_index is None else np.full(len(images), class_index)
    gradients = GuidedBackprop(model)(images, classes)
    return None, gradients, probabilities, classes, np.zeros(len(images), bool), "guided backpropagation"


def _stretched(gradients, original):
    """A per-model-input-pixel gradient (size, size, 3) stretched back onto the original's shape."""
    return tf.image.resize(gradients, original.shape[:2], method="bilinear").numpy()


def _prediction_details(probabilities, class_names):
    """The ``top-k: ...`` detail line of a figure."""
    return (f"top-{min(TOP_K, len(probabilities))}: {top_classes(probabilities, class_names)}",)


def _per_image(model, files, method, class_index, layer_name, class_names, output_dir):
    """A CAM (image | heatmap | overlay) or gradient figure per image, on the original image."""
    images = np.stack([file.pixels for file in files])  # (n, size, size, 3)
    heatmaps, gradients, probabilities, classes, empty, method_name = _explain_batch(
        model, images, method, class_index, layer_name)
    written = []
    for item, file in enumerate(files):
        explained = int(classes[item])
        title = prediction_title(probabilities[item], explained, class_names, method_name)
        if heatmaps is not None:
            figure = explanation_figure(file.original, heatmaps[item], title, bool(empty[item]))
        else:
            figure = gradient_figure(file.original, _stretched(gradients[item], file.original), title)
        path = save_figure(figure, output_dir / f"{file.path.stem}_{method}.png")
        note = " (empty map: the image argues against this class)" if empty[item] else ""
        predicted = int(np.argmax(probabilities[item]))
        written.append(Written(
            path, f"{file.path.stem}: predicted {class_name(predicted, class_names)} "
                  f"({probabilities[item][predicted]:.1%}), explained "
                  f"{class_name(explained, class_names)}{note}",
            _prediction_details(probabilities[item], class_names)))
    return written


def _box_on_original(box, model_size, original_size):
    """A box (x0, y0, x1, y1) in model-input pixels, in the pixels of the (stretched) original."""
    x_scale, y_scale = original_size[1] / model_size[1], original_size[0] / model_size[0]
    x0, y0, x1, y1 = box
    return x0 * x_scale, y0 * y_scale, x1 * x_scale, y1 * y_scale


def _guided_channel(model, files, layer_name, channel, class_names, output_dir):
    """Guided backpropagation of a channel's strongest unit: a figure per image, its field boxed."""
    explainer = GuidedChannelBackprop(model, layer_name, channel)
    images = np.stack([file.pixels for file in files])  # (n, size, size, 3)
    result = explainer(images)
    probabilities = tf.nn.softmax(model(images, training=False)).numpy()
    field = receptive_field(model, explainer.layer_name)
    unit = f"{explainer.layer_name} channel {channel}"
    written = []
    for item, file in enumerate(files):
        row, col = (int(value) for value in result.positions[item])
        activation = float(result.activations[item])
        box = _box_on_original(field.box(row, col, images.shape[1:3]), images.shape[1:3],
                               file.original.shape[:2])
        predicted = int(np.argmax(probabilities[item]))
        prediction = f"predicted {class_name(predicted, class_names)} ({probabilities[item][predicted]:.1%})"
        title = f"guided backpropagation of {unit}, strongest at ({row}, {col}): {activation:.3g}\n{prediction}"
        figure = gradient_figure(file.original, _stretched(result.gradients[item], file.original),
                                 title, box=box)
        name = f"{file.path.stem}_guided-backprop_{explainer.layer_name.replace('/', '__')}_channel{channel}.png"
        path = save_figure(figure, output_dir / name)
        note = "" if result.gradients[item].any() else " (the channel is silent here: zero gradient)"
        written.append(Written(
            path, f"{file.path.stem}: {unit} strongest at ({row}, {col}), {activation:.3g}{note}; "
                  f"{prediction}", _prediction_details(probabilities[item], class_names)))
    return written
