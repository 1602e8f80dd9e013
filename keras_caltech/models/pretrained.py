"""ImageNet backbones from ``keras.applications`` with a new classifier head, for transfer.

Seed report 001 fine-tuned a pretrained Xception's last layer to 85.6% top-1 on
Caltech-256 in 2 epochs; report 003 retrained VGG19's classifier to 93% on a Caltech-101
subset; report 004 fine-tuned a pretrained ResNet-50. EfficientNetV2-B0 is a modern,
efficient (5.9M-parameter) backbone for the same recipe.

Each backbone is built on the model's own normalized tensor (``input_tensor=``), so
the model stays one flat graph: every backbone layer is reachable by name, for Grad-CAM
and for :mod:`keras_caltech.models.transfer`. The ``normalize`` layer reproduces the
backbone's ``preprocess_input`` (a test checks it numerically), so callers feed the
same 0-255 RGB images to every model.

``weights`` is "imagenet" (downloaded once by Keras into ``~/.keras/models``; needs the
internet the first time), a local weights file for the backbone, or None (random).
A local file is what ``backbone.save_weights("x.weights.h5")`` writes for a
``keras.applications`` backbone built with ``include_top=False``. Legacy HDF5 ``.h5``
files, such as Keras's own ``*_notop.h5`` ImageNet weights copied by hand to an offline
machine, are loaded by Keras by layer order.
"""

import pathlib
import warnings

import keras

from keras_caltech.errors import UserError
from keras_caltech.models.blocks import pooled_classifier
from keras_caltech.models.registry import register_model

# preprocess_input's modes as (x[..., order] - mean) / std in 0-255 units.
CAFFE_NORMALIZATION = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0),
                           reverse_channels=True)  # BGR, ImageNet mean, no scaling
TF_NORMALIZATION = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))  # to [-1, 1]
# EfficientNetV2 normalizes inside its own graph (include_preprocessing=True).
IDENTITY_NORMALIZATION = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _build_backbone(application, x, weights, **application_options):
    """Builds a ``keras.applications`` backbone on ``x`` and loads its weights.

    Args:
        application: e.g. ``keras.applications.Xception``.
        x: normalized images (batch, size, size, 3), the model's own tensor.
        weights: "imagenet", a local weights file path, or None.
        **application_options: passed to ``application``.

    Returns:
        The backbone as a ``keras.Model`` whose layers are part of ``x``'s graph;
        ``backbone.output`` is its last feature map (batch, h, w, channels).

    Raises:
        UserError: ``weights`` is not one of the above, or the file is missing, is not
            a Keras weights file, or holds weights of another architecture.
    """
    label = application.__name__
    if weights is None or weights == "imagenet":
        return application(include_top=False, weights=weights, input_tensor=x,
                           **application_options)
    if not isinstance(weights, (str, pathlib.Path)):
        raise UserError(f"weights must be 'imagenet', a weights file path, or None. "
                        f"Received: weights={weights!r}")
    path = pathlib.Path(weights)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist. Pass 'imagenet', None, "
                        f"or the path of a {label} backbone's .weights.h5 file.")
    backbone = application(include_top=False, weights=None, input_tensor=x, **application_options)
    # A file for another architecture makes Keras warn once per layer before it raises;
    # the UserError below says it once, so those warnings are only shown on success.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(str(path))
        except (ValueError, OSError, KeyError) as error:
            # Keras's first line says what failed; its per-layer details follow.
            reason = str(error).splitlines()[0].split(" Example error message")[0]
            raise UserError(
                f"weights file {str(path)!r} does not fit the {label} backbone: {reason} "
                f"Expected what keras.applications.{label}(include_top=False).save_weights("
                f"'name.weights.h5') writes.") from error
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return backbone


@register_model("xception_imagenet", gradcam_layer="block14_sepconv2_act",
                default_image_size=299, min_image_size=23, pretrained=True,
                input_normalization=TF_NORMALIZATION, options=("dropout",),
                block_pattern=r"block\d+")
def build_xception_imagenet(x, num_classes, *, weights=None, dropout=0.2):
    """Builds Xception (ImageNet) -> GAP -> Dropout -> Dense logits.

    Args:
        x: images normalized to [-1, 1] (batch, size, size, 3), size >= 23.
        num_classes: number of logits.
        weights: "imagenet", a weights file path, or None.
        dropout: dropout rate before the logits.

    Returns:
        Logits (batch, num_classes).
    """
    backbone = _build_backbone(keras.applications.Xception, x, weights)
    # Keras documents 71 px as Xception's minimum; it checks that only for an Input it
    # makes itself. Its graph downsamples down to 23 px (see the min_image_size test).
    features = backbone.output  # (batch, ~s/32, ~s/32, 2048)
    return pooled_classifier(features, num_classes, dropout)


@register_model("vgg19_imagenet", gradcam_layer="block5_conv4", default_image_size=224,
                min_image_size=32, pretrained=True, input_normalization=CAFFE_NORMALIZATION,
                options=("dropout",), block_pattern=r"block\d+")
def build_vgg19_imagenet(x, num_classes, *, weights=None, dropout=0.2):
    """Builds VGG19 (ImageNet) -> GAP -> Dropout -> Dense logits.

    Args:
        x: BGR images minus the ImageNet mean (batch, size, size, 3), size >= 32.
        num_classes: number of logits.
        weights: "imagenet", a weights file path, or None.
        dropout: dropout rate before the logits.

    Returns:
        Logits (batch, num_classes).
    """
    backbone = _build_backbone(keras.applications.VGG19, x, weights)
    features = backbone.output  # (batch, s/32, s/32, 512), after block5_pool
    return pooled_classifier(features, num_classes, dropout)


@register_model("resnet50_imagenet", gradcam_layer="conv5_block3_out", default_image_size=224,
                min_image_size=17, pretrained=True, input_normalization=CAFFE_NORMALIZATION,
                options=("dropout",), block_pattern=r"conv\d_block\d+|conv1")
def build_resnet50_imagenet(x, num_classes, *, weights=None, dropout=0.2):
    """Builds ResNet-50 (ImageNet, Keras's v1) -> GAP -> Dropout -> Dense logits.

    Args:
        x: BGR images minus the ImageNet mean (batch, size, size, 3), size >= 17.
        num_classes: number of logits.
        weights: "imagenet", a weights file path, or None.
        dropout: dropout rate before the logits.

    Returns:
        Logits (batch, num_classes).
    """
    backbone = _build_backbone(keras.applications.ResNet50, x, weights)
    features = backbone.output  # (batch, s/32, s/32, 2048)
    return pooled_classifier(features, num_classes, dropout)


@register_model("efficientnetv2b0_imagenet", gradcam_layer="top_activation",
                default_image_size=224, min_image_size=17, pretrained=True,
                input_normalization=IDENTITY_NORMALIZATION, options=("dropout",),
                block_pattern=r"stem|block\d+[a-z]|top")
def build_efficientnetv2b0_imagenet(x, num_classes, *, weights=None, dropout=0.2):
    """Builds EfficientNetV2-B0 (ImageNet) -> GAP -> Dropout -> Dense logits.

    Args:
        x: 0-255 RGB images (batch, size, size, 3), size >= 17: the backbone rescales
            and normalizes them itself (``include_preprocessing=True``).
        num_classes: number of logits.
        weights: "imagenet", a weights file path, or None.
        dropout: dropout rate before the logits.

    Returns:
        Logits (batch, num_classes).
    """
    backbone = _build_backbone(keras.applications.EfficientNetV2B0, x, weights,
                               include_preprocessing=True)
    features = backbone.output  # (batch, s/32, s/32, 1280)
    return pooled_classifier(features, num_classes, dropout)
