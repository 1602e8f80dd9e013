"""Plain convolutional networks without shortcuts: ImprovedCNN and three small CNNs.

ImprovedCNN (Caltech-256, seed report 000) deepens MyCNN to two Conv(3x3) -> BatchNorm
-> ReLU per block and regularizes its dense head with dropout. Reported: 46.1%
validation accuracy with SGD + StepLR, 48.35% with OneCycleLR (peak 0.1, 20 epochs).

The small CNNs are the three architectures of a Caltech-101 5-class study (seed report
003), AlexNet-like: an 11x11 stride-4 first convolution and 3x3 stride-2 max pooling.
Their layer tables are Keras summaries at 224 px, reproduced exactly here (layer by
layer output shapes and parameter counts; see tests/test_models.py). Reported
validation accuracy: 74% (4 layers), 74% (5 layers), 70% (6 layers).
"""

from keras import layers

from keras_caltech.models.blocks import conv_bn_relu
from keras_caltech.models.layers import AdaptiveAveragePooling2D
from keras_caltech.models.registry import register_model

# The report gives no widths; these are MyCNN's, which ImprovedCNN deepens.
IMPROVED_CNN_FILTERS = (32, 64, 128, 256)


@register_model("improved_cnn", gradcam_layer="block4_2_relu", default_image_size=224,
                min_image_size=64, options=("dropout",))
def build_improved_cnn(x, num_classes, *, dropout=0.5):
    """Builds ImprovedCNN: 4 blocks of 2x(Conv3x3-BN-ReLU) + MaxPool, adaptive pool, dense head.

    The Grad-CAM layer ``block4_2_relu`` is the report's ``features[24]`` conv, after
    its BatchNorm and ReLU.

    Args:
        x: normalized images (batch, size, size, 3); size >= 64 so that the adaptive
            4x4 pool still averages (224 px: 14x14 -> 4x4).
        num_classes: number of logits.
        dropout: dropout rate before each dense layer.

    Returns:
        Logits (batch, num_classes).
    """
    for block, filters in enumerate(IMPROVED_CNN_FILTERS, start=1):
        x = conv_bn_relu(x, filters, f"block{block}_1")
        x = conv_bn_relu(x, filters, f"block{block}_2")
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)  # halves h and w
    x = AdaptiveAveragePooling2D((4, 4), name="adaptive_pool")(x)  # (batch, 4, 4, 256)
    x = layers.Flatten(name="flatten")(x)  # (batch, 4096)
    x = layers.Dropout(dropout, name="fc1_dropout")(x)
    x = layers.Dense(512, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="logits_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)  # float32 under mixed precision


def _small_cnn(x, num_classes, conv_filters, pool_after, dropout):
    """The small CNNs' shared stem and head.

    Args:
        x: normalized images (batch, size, size, 3).
        num_classes: number of logits (5 in the report).
        conv_filters: filters of conv1, conv2, ... (8, 16, 32, 64 in the report).
        pool_after: whether a 3x3 stride-2 max pool follows each convolution.
        dropout: dropout rate before the logits (the report used none).

    Returns:
        Logits (batch, num_classes).
    """
    kernel_sizes = (11, 5, 3, 3)
    layer_settings = zip(conv_filters, kernel_sizes, pool_after)
    for number, (filters, kernel_size, pool) in enumerate(layer_settings, start=1):
        # The tables list no activation layers, so the activation is part of each Conv2D;
        # the report does not name it, ReLU is assumed. Only conv1 strides (4), and
        # "same" padding gives 224 -> 56 as tabulated.
        x = layers.Conv2D(filters, kernel_size, strides=4 if number == 1 else 1,
                          padding="same", activation="relu", name=f"conv{number}")(x)
        if pool:
            # 3x3 windows with stride 2 ("valid"): 56 -> 27 -> 13 -> 6, as tabulated.
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{number}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="fc1_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)  # float32 under mixed precision


# Minimum sizes: each "valid" 3x3 pool needs a 3x3 input. With conv1 giving
# ceil(size / 4), two pools need size >= 25 and three pools size >= 57.
@register_model("small_cnn_4", gradcam_layer="conv2", default_image_size=224,
                min_image_size=25, options=("dropout",))
def build_small_cnn_4(x, num_classes, *, dropout=0.0):
    """Builds the 4-layer CNN: conv 8@11x11/4, pool, conv 16@5x5, pool, dense 128, logits.

    At 224 px: (56, 56, 8) -> (27, 27, 8) -> (27, 27, 16) -> (13, 13, 16) -> 2704 -> 128.

    Args:
        x: normalized images (batch, size, size, 3), size >= 25.
        num_classes: number of logits.
        dropout: dropout rate before the logits; the report used none.

    Returns:
        Logits (batch, num_classes).
    """
    return _small_cnn(x, num_classes, (8, 16), (True, True), dropout)


@register_model("small_cnn_5", gradcam_layer="conv3", default_image_size=224,
                min_image_size=57, options=("dropout",))
def build_small_cnn_5(x, num_classes, *, dropout=0.0):
    """Builds the 5-layer CNN (the report's best): 4-layer CNN + conv 32@3x3 and a pool.

    At 224 px: ... (13, 13, 16) -> (13, 13, 32) -> (6, 6, 32) -> 1152 -> 128.

    Args:
        x: normalized images (batch, size, size, 3), size >= 57.
        num_classes: number of logits.
        dropout: dropout rate before the logits; the report used none.

    Returns:
        Logits (batch, num_classes).
    """
    return _small_cnn(x, num_classes, (8, 16, 32), (True, True, True), dropout)


@register_model("small_cnn_6", gradcam_layer="conv4", default_image_size=224,
                min_image_size=57, options=("dropout",))
def build_small_cnn_6(x, num_classes, *, dropout=0.0):
    """Builds the 6-layer CNN: the 5-layer CNN with conv 64@3x3 between conv3 and its pool.

    At 224 px: ... (13, 13, 16) -> (13, 13, 32) -> (13, 13, 64) -> (6, 6, 64) -> 2304 -> 128.
    The report's table prints (13, 13, 64) for that last pool, but its own Flatten size
    (2304 = 6 * 6 * 64) and Dense parameter count (295,040) need the pooled 6x6: the
    printed shape is a typo, and the parameter counts are followed here.

    Args:
        x: normalized images (batch, size, size, 3), size >= 57.
        num_classes: number of logits.
        dropout: dropout rate before the logits; the report used none.

    Returns:
        Logits (batch, num_classes).
    """
    return _small_cnn(x, num_classes, (8, 16, 32, 64), (True, True, False, True), dropout)
