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

Every backbone gets the pooled head (``head="pooled"``: GAP -> Dropout -> Dense), which
takes any input size. VGG19 can instead keep its own ImageNet classifier (``head="top"``,
report 003's model): Flatten -> ``fc1`` (4096, ReLU) -> ``fc2`` (4096, ReLU) with their
pretrained weights, and a new Dense in place of the 1000-way ``predictions`` layer. Its
weights are those of the whole ``keras.applications.VGG19(include_top=True)``: Keras's
full ImageNet file for "imagenet" (``vgg19_weights_tf_dim_ordering_tf_kernels.h5``, 575
MB), or a local file that model's ``save_weights`` wrote. ``fc1`` takes the 7 x 7 x 512
feature map of a 224 px image, so this head takes 224 px images only. ``fc1`` and
``fc2`` form the top backbone block, ``fc`` (``block_pattern``): phase 1 trains the new
layer alone, as the report retrained "its classification layer", and
``fine_tune_blocks=1`` trains ``fc1`` and ``fc2`` too.
"""

import pathlib
import warnings

import keras

from keras_caltech.errors import UserError
from keras_caltech.models.blocks import dropout_and_logits, pooled_classifier
from keras_caltech.models.registry import register_model

# preprocess_input's modes as (x[..., order] - mean) / std in 0-255 units.
CAFFE_NORMALIZATION = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0),
                           reverse_channels=True)  # BGR, ImageNet mean, no scaling
TF_NORMALIZATION = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))  # to [-1, 1]
# EfficientNetV2 normalizes inside its own graph (include_preprocessing=True).
IDENTITY_NORMALIZATION = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

# The heads a backbone can have (config.HEADS lists the same): its own ImageNet
# classifier ("top") is kept only where it is more than GAP -> Dense (VGG's fc1, fc2).
HEADS = ("pooled", "top")
# VGG's fc1 takes the flattened 7 x 7 x 512 feature map of this input size.
VGG_TOP_IMAGE_SIZE = 224


def _build_backbone(application, x, weights, include_top=False, **application_options):
    """Builds a ``keras.applications`` backbone on ``x`` and loads its weights.

    Args:
        application: e.g. ``keras.applications.Xception``.
        x: normalized images (batch, size, size, 3), the model's own tensor.
        weights: "imagenet", a local weights file path, or None.
        include_top: also build (and load) the ImageNet classifier, up to its 1000-way
            ``predictions`` layer, which the caller leaves out of its model.
        **application_options: passed to ``application``.

    Returns:
        The backbone as a ``keras.Model`` whose layers are part of ``x``'s graph;
        ``backbone.output`` is its last feature map (batch, h, w, channels), or with
        ``include_top`` its ImageNet probabilities (batch, 1000).

    Raises:
        UserError: ``weights`` is not one of the above, or the file is missing, is not
            a Keras weights file, or holds weights of another architecture.
    """
    label = application.__name__
    # The model whose save_weights writes the file this backbone loads.
    writer = f"keras.applications.{label}(include_top={include_top})"
    what = f"a whole {label}'s (include_top=True)" if include_top else f"a {label} backbone's"
    if weights is None or weights == "imagenet":
        return application(include_top=include_top, weights=weights, input_tensor=x,
                           **application_options)
    if not isinstance(weights, (str, pathlib.Path)):
        raise UserError(f"weights must be 'imagenet', a weights file path, or None. "
                        f"Received: weights={weights!r}")
    path = pathlib.Path(weights)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist. Pass 'imagenet', None, "
                        f"or the path of {what} .weights.h5 file.")
    backbone = application(include_top=include_top, weights=None, input_tensor=x, **application_options)
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
                f"weights file {str(path)!r} does not fit the {label} "
                f"{'with its ImageNet classifier' if include_top else 'backbone'}: {reason} "
                f"Expected what {writer}.save_weights('name.weights.h5') writes.") from error
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
                options=("dropout", "head"), block_pattern=r"block\d+|fc")
def build_vgg19_imagenet(x, num_classes, *, weights=None, dropout=0.2, head="pooled"):
    """Builds VGG19 (ImageNet) -> GAP -> Dropout -> Dense logits, or keeps VGG19's fc1 and fc2.

    Args:
        x: BGR images minus the ImageNet mean (batch, size, size, 3), size >= 32;
            exactly 224 with ``head="top"``.
        num_classes: number of logits.
        weights: "imagenet", a weights file path, or None. With ``head="top"``, the
            weights of a whole VGG19 (``include_top=True``), fc1 and fc2 included.
        dropout: dropout rate before the logits.
        head: "pooled" (GAP -> Dropout -> Dense) or "top" (Flatten -> fc1 -> fc2 ->
            Dropout -> Dense, fc1 and fc2 pretrained; see the module docstring).

    Returns:
        Logits (batch, num_classes).

    Raises:
        UserError: an unknown head, or ``head="top"`` on another input size than 224.
    """
    if head not in HEADS:
        raise UserError(f"unknown head {head!r} for vgg19_imagenet. Valid heads: {', '.join(HEADS)}")
    if head == "pooled":
        backbone = _build_backbone(keras.applications.VGG19, x, weights)
        features = backbone.output  # (batch, s/32, s/32, 512), after block5_pool
        return pooled_classifier(features, num_classes, dropout)
    size = x.shape[1]
    if size != VGG_TOP_IMAGE_SIZE:  # checked before 143M weights are allocated
        raise UserError(
            f"vgg19_imagenet with head=top takes {VGG_TOP_IMAGE_SIZE} px images only: its fc1 "
            f"was trained on the 7 x 7 x 512 feature map of a {VGG_TOP_IMAGE_SIZE} px image. "
            f"Received: image_size={size}. Set data.image_size={VGG_TOP_IMAGE_SIZE}, or "
            f"model.head=pooled for any size")
    network = _build_backbone(keras.applications.VGG19, x, weights, include_top=True)
    # Flatten (batch, 25088) -> fc1 -> fc2 (batch, 4096); the 1000-way predictions
    # layer after fc2 stays out of our model.
    features = network.get_layer("fc2").output
    return dropout_and_logits(features, num_classes, dropout)


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
