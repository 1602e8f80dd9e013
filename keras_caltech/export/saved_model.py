"""Exporting a trained classifier as a TF Serving SavedModel that takes image bytes.

The SavedModel lands in ``BASE_DIR/NAME/VERSION/`` (integer versions: TF Serving loads
the highest one and ignores any other name) and answers on three signatures:

``serving_default``
    ``image_bytes``: string (batch,), encoded JPEG, PNG, GIF (first frame), BMP or WebP,
    grayscale or colour, of at most ``MAX_PIXELS`` pixels. Outputs ``probabilities``
    float32 (batch, classes), ``top_k_classes`` int32 (batch, k), ``top_k_names`` string
    (batch, k), ``top_k_scores`` float32 (batch, k); k = min(5, classes).
``predict_images``
    ``images``: float32 (batch, height, width, 3), RGB 0-255, any height and width, finite.
    Same outputs.
``gradcam``
    ``image_bytes`` as above. Outputs ``class_index`` int32 (batch,), ``class_name``
    string (batch,), ``score`` float32 (batch,) (its probability), ``heatmap`` float32
    (batch, size, size) in [0, 1] at the model's input size, ``empty`` bool (batch,). The
    heatmap covers what the model sees: the whole image, or for a run trained on random
    crops of a larger resize the central crop of that resize (``pipeline.crop_window``).

Inside, images are decoded and resized by ``decode_and_resize``, the function the
evaluation pipeline's preprocessing is defined by, and normalized by the model's own
first layer, so served answers equal evaluation's (for a run trained on random crops of
a larger resize, the same central crop of that resize). Every request is refused whole
with InvalidArgument (TF Serving answers HTTP 400 with the message), never answered with
a made-up answer for part of it, when it holds no image, bytes that do not decode, an
image whose header declares more than ``MAX_PIXELS`` pixels or whose size cannot be read
from its header (read by graph ops before decoding: ``data/pixel_limit.py``; TF Serving
runs no Python), or pixels that are NaN or infinite.
"""

import os
import pathlib
import shutil
import uuid

import keras
import tensorflow as tf

from keras_caltech.data.pipeline import decode_and_resize, resize_for_model
from keras_caltech.data.pixel_limit import assert_pixel_limit
from keras_caltech.errors import UserError
from keras_caltech.export.heatmap import gradcam_heatmaps, gradcam_model
from keras_caltech.export.layout import next_version
from keras_caltech.models import get_model_entry
from keras_caltech.models.loading import load_model_safely
from keras_caltech.runs import open_run

TOP_K = 5
MAX_VERSION = 2 ** 63 - 1  # TF Serving reads versions as int64


def build_archive(model, class_names, resize_crop=0):
    """Wraps a trained classifier in the three serving signatures.

    Args:
        model: a registered classifier (``model.name`` is its registry name):
            (batch, size, size, 3) float 0-255 RGB in, logits out.
        class_names: class names in label order, one per logit.
        resize_crop: the run's ``augment.resize_crop`` (see ``pipeline.resize_for_model``).

    Returns:
        A ``keras.export.ExportArchive`` ready for ``write_out``.

    Raises:
        UserError: the model is not registered, not square, or its number of logits
            differs from the number of class names.
    """
    entry = get_model_entry(model.name)
    image_size = _check_exportable(model, class_names)
    names = tf.constant(list(class_names))  # (classes,) string, part of the graph
    decode_batch = _batch_decoder(image_size, resize_crop)
    classify = _classifier(model, names)
    taps = gradcam_model(model, entry.gradcam_layer)

    def serve_bytes(image_bytes):
        return classify(decode_batch(image_bytes))

    def serve_images(images):
        images = _checked_pixels(images)
        # The same resize as decode_and_resize, on pixels already decoded.
        return classify(resize_for_model(images, image_size, resize_crop))

    def serve_gradcam(image_bytes):
        result = gradcam_heatmaps(taps, decode_batch(image_bytes))
        probabilities = tf.nn.softmax(result["logits"])
        return {"class_index": result["class_index"],
                "class_name": tf.gather(names, result["class_index"]),
                "score": tf.gather(probabilities, result["class_index"], batch_dims=1),
                "heatmap": result["heatmap"], "empty": result["empty"]}

    bytes_spec = tf.TensorSpec((None,), tf.string, name="image_bytes")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes, input_signature=[bytes_spec])
    archive.add_endpoint("predict_images", serve_images,
                         input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32, name="images")])
    archive.add_endpoint("gradcam", serve_gradcam, input_signature=[bytes_spec])
    return archive


def _check_exportable(model, class_names):
    """Returns the side of the model's square RGB input, after checking it can be served.

    Raises:
        UserError: the input is not square RGB of a fixed size, or the number of logits
            differs from the number of class names.
    """
    _, height, width, channels = model.input_shape
    num_classes = model.output_shape[-1]
    if height != width or height is None or channels != 3:
        raise UserError(f"only models taking square RGB images of a fixed size can be exported. "
                        f"Received input shape {model.input_shape}")
    if len(class_names) != num_classes:
        raise UserError(f"model {model.name!r} has {num_classes} outputs but {len(class_names)} class "
                        "names were given; export the class_names.json of the run that trained it")
    return height


def _batch_decoder(image_size, resize_crop):
    """Returns ``decode_batch(image_bytes)``: string (batch,) to float32 (batch, size, size, 3) 0-255.

    An empty batch, or an image over the pixel limit, fails with InvalidArgument before
    anything is decoded.
    """
    def decode_one(encoded):
        return decode_and_resize(assert_pixel_limit(encoded), image_size, resize_crop)

    def decode_batch(image_bytes):
        image_bytes = _non_empty(image_bytes)
        # Images of different sizes cannot share a batch before resizing: one at a time.
        return tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.TensorSpec(
            (image_size, image_size, 3), tf.float32))  # (batch, size, size, 3) 0-255

    return decode_batch


def _non_empty(batch):
    """``batch`` once it holds at least one image.

    An empty batch is refused rather than answered with empty outputs: the convolutions
    fail on it with a message about filter depths, and a client that sends nothing has a
    bug worth hearing about.
    """
    check = tf.debugging.assert_positive(tf.shape(batch)[0], message="the request holds no image")
    with tf.control_dependencies([check]):
        return tf.identity(batch)


def _checked_pixels(images):
    """``images`` (batch, h, w, 3) float32 once the batch holds an image and every pixel is finite.

    A NaN or infinite pixel would otherwise come back as a confident, meaningless answer.
    """
    images = _non_empty(images)
    return tf.debugging.assert_all_finite(
        images, "predict_images: every pixel must be a finite number (RGB 0-255); received NaN or infinity")


def _classifier(model, names):
    """Returns ``classify(images)``: the outputs of ``serving_default`` and ``predict_images``.

    Args:
        model: the classifier, logits out.
        names: string tensor (classes,) of the class names.
    """
    top_k = min(TOP_K, model.output_shape[-1])

    def classify(images):
        probabilities = tf.nn.softmax(model(images, training=False))  # (batch, classes)
        scores, indices = tf.math.top_k(probabilities, k=top_k)  # (batch, k) each
        return {"probabilities": probabilities, "top_k_classes": indices,
                "top_k_names": tf.gather(names, indices), "top_k_scores": scores}

    return classify


def export_model(model, class_names, base_dir, name, version=None, resize_crop=0):
    """Writes ``model`` as a SavedModel to ``base_dir/name/version/``.

    Args:
        model: a registered classifier (see :func:`build_archive`).
        class_names: class names in label order.
        base_dir: the folder TF Serving's models live in, e.g. ``saved_models``.
        name: the served model's name (one folder name).
        version: a positive integer up to ``MAX_VERSION``, or None for the next free one.
        resize_crop: the run's ``augment.resize_crop`` (see :func:`build_archive`).

    Returns:
        The version folder as a pathlib.Path.

    Raises:
        UserError: a bad name or version, or a version that already exists.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise UserError(f"the exported model's name must be one folder name. Received: {name!r}")
    model_dir = pathlib.Path(base_dir) / name
    if version is None:
        version = next_version(model_dir)
    elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"the version must be a positive integer. Received: {version!r}")
    if version > MAX_VERSION:
        raise UserError(f"the version must be at most 2**63 - 1 = {MAX_VERSION} (TF Serving reads versions as int64). "
                        f"Received: {version}")
    target = model_dir / str(version)
    if target.exists():
        raise UserError(f"{target} already exists; TF Serving versions are never overwritten. "
                        f"Pick another --version (next free: {next_version(model_dir)}) "
                        "or omit it")
    archive = build_archive(model, class_names, resize_crop)
    # Written under a name TF Serving ignores (not an integer), then renamed into place,
    # so a server watching the folder never loads a half-written version.
    # mkdir (not mkdtemp, which makes the folder private) keeps the umask's permissions,
    # so a server running as another user (TF Serving's container) can read it.
    staging = model_dir / f".{version}-{uuid.uuid4().hex}.tmp"
    try:
        staging.mkdir(parents=True)
    except OSError as error:
        raise UserError(f"cannot create the SavedModel folder in {model_dir}: {error.strerror}. "
                        "Pick a writable --base-dir (export.base_dir)") from error
    try:
        archive.write_out(str(staging), verbose=False)
        if target.exists():  # another export took this version meanwhile
            raise UserError(f"{target} appeared while exporting; nothing was overwritten")
        os.rename(staging, target)
    except (OSError, tf.errors.OpError) as error:  # a full disk, a folder turned read-only
        reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
        raise UserError(f"cannot write the SavedModel to {model_dir}: {reason}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def export_run(run_dir, base_dir="saved_models", name=None, version=None):
    """Exports the best model of a finished run folder.

    Args:
        run_dir: a run folder written by training (``best.keras``, ``class_names.json``).
        base_dir: where TF Serving's models live.
        name: the served model's name; default the run folder's name.
        version: a positive integer, or None for the next free one.

    Returns:
        The version folder as a pathlib.Path.

    Raises:
        UserError: not a run folder, an unloadable model, or see :func:`export_model`.
    """
    run = open_run(run_dir, need_model=True)
    model = load_model_safely(run.model_path)
    return export_model(model, run.class_names, base_dir, name or run.path.resolve().name, version,
                        resize_crop=run.config.augment.resize_crop)
