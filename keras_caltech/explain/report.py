"""From files on disk to explanation figures: what ``explain.py`` calls.

A saved model (``.keras``) and images in, PNG figures out, one short line per figure.
"""

import dataclasses
import difflib
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import keras_caltech.models  # noqa: F401  (registers the custom layers a .keras file names)
from keras_caltech.errors import UserError
from keras_caltech.explain.figures import (explanation_figure, feature_map_figure,
                                           gradient_figure, patches_figure, prediction_title,
                                           save_figure)
from keras_caltech.explain.gradcam import GradCam, GradCamPlusPlus, ScoreCam
from keras_caltech.explain.guided import GuidedBackprop, GuidedGradCam
from keras_caltech.explain.layers import image_shape
from keras_caltech.explain.views import feature_maps, top_activating_patches

CAM_METHODS = {"gradcam": GradCam, "gradcam++": GradCamPlusPlus, "scorecam": ScoreCam}
METHODS = (*CAM_METHODS, "guided-backprop", "guided-gradcam", "feature-maps", "patches")


def read_image(path, image_size):
    """Reads an image file as the model takes it.

    To be replaced by the data pipeline's shared function, so that training and
    explanation resize identically.

    Args:
        path: a JPEG, PNG, GIF (first frame) or BMP file.
        image_size: (height, width) of the model's input.

    Returns:
        (height, width, 3) float32 RGB 0-255.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        raise UserError(f"cannot decode {path} as an image (JPEG, PNG, GIF or BMP)") from None
    return tf.image.resize(tf.cast(image, tf.float32), image_size, method="bilinear").numpy()


def load_model(path):
    """Loads a ``.keras`` model and the ``class_names.json`` beside it, if any.

    Returns:
        (model, class names as a list or None).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if path.suffix != ".keras":
        raise UserError(f"expected a .keras model file. Received: {path}")
    try:
        model = keras.models.load_model(path)
    except (ValueError, TypeError, OSError) as error:
        raise UserError(f"cannot load model {path}: {error}") from None
    names_path = path.with_name("class_names.json")
    if not names_path.is_file():
        return model, None
    try:
        class_names = json.loads(names_path.read_text())
    except ValueError as error:
        raise UserError(f"{names_path} is not valid JSON: {error}") from None
    num_classes = model.outputs[0].shape[-1]
    if not isinstance(class_names, list) or len(class_names) != num_classes:
        raise UserError(f"{names_path} must hold a list of {num_classes} class names, one per "
                        f"model output. Received {type(class_names).__name__} of length "
                        f"{len(class_names) if isinstance(class_names, list) else '-'}")
    return model, [str(name) for name in class_names]


def resolve_class(value, class_names, num_classes):
    """Turns ``--class`` (a name or an index) into a class index; None stays None."""
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
    close = difflib.get_close_matches(value, class_names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown class {value!r}.{hint} See class_names.json for the valid names.")


@dataclasses.dataclass(frozen=True)
class Written:
    """One figure written: where, and a one-line description."""

    path: Path
    summary: str


def explain_images(model, image_paths, method="gradcam", class_index=None, layer_name=None,
                   channel=None, class_names=None, output_dir="explanations"):
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

    Returns:
        A list of :class:`Written`.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}. Valid methods: {', '.join(METHODS)}")
    size = image_shape(model)[:2]
    if None in size:
        raise UserError(f"model {model.name!r} takes images of any size; explain.py needs a "
                        f"fixed input size")
    images = np.stack([read_image(path, size) for path in image_paths])  # (n, h, w, 3)
    stems = [Path(path).stem for path in image_paths]
    output_dir = Path(output_dir)
    if method == "patches":
        return [_patches(model, images, class_index, layer_name, channel, class_names, output_dir)]
    if method == "feature-maps":
        return _feature_maps(model, images, stems, layer_name, output_dir)
    return _per_image(model, images, stems, method, class_index, layer_name, class_names, output_dir)


def _class_name(index, class_names):
    return class_names[index] if class_names else f"class {index}"


def _patches(model, images, class_index, layer_name, channel, class_names, output_dir):
    """One grid of the strongest patches of a channel, or of whole images for a class."""
    if channel is not None:
        unit = f"channel {channel} of {layer_name or 'the default layer'}"
        file_name = f"patches_channel{channel}.png"
        class_index = None
    elif class_index is not None:
        unit, file_name = _class_name(class_index, class_names), f"patches_class{class_index}.png"
    else:
        raise UserError("--method patches needs a unit: --class NAME|INDEX, or --layer and --channel")
    patches = top_activating_patches(model, images, layer_name=layer_name, channel=channel,
                                     class_index=class_index, top_k=9,
                                     one_per_image=len(images) > 1)
    path = save_figure(patches_figure(patches, f"top patches: {unit}"), output_dir / file_name)
    return Written(path, f"{len(patches)} patches for {unit} from {len(images)} image(s)")


def _feature_maps(model, images, stems, layer_name, output_dir):
    """One grid per convolution layer (or the asked layer) per image."""
    written = []
    for stem, image in zip(stems, images):
        maps = feature_maps(model, image, None if layer_name is None else [layer_name])
        for layer, activations in maps.items():
            file_name = f"{stem}_feature-maps_{layer.replace('/', '__')}.png"
            path = save_figure(feature_map_figure(activations, layer), output_dir / file_name)
            written.append(Written(path, f"{stem}: {layer} {activations.shape}"))
    return written


def _per_image(model, images, stems, method, class_index, layer_name, class_names, output_dir):
    """A CAM (image | heatmap | overlay) or gradient figure per image."""
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
    for item, (stem, image) in enumerate(zip(stems, images)):
        explained = int(classes[item])
        title = prediction_title(probabilities[item], explained, class_names, method_name)
        if heatmaps is not None:
            figure = explanation_figure(image, heatmaps[item], title, bool(empty[item]))
        else:
            figure = gradient_figure(image, gradients[item], title)
        path = save_figure(figure, output_dir / f"{stem}_{method}.png")
        note = " (empty map: the image argues against this class)" if empty[item] else ""
        predicted = int(np.argmax(probabilities[item]))
        written.append(Written(path, f"{stem}: predicted {_class_name(predicted, class_names)} "
                                     f"({probabilities[item][predicted]:.1%}), explained "
                                     f"{_class_name(explained, class_names)}{note}"))
    return written
