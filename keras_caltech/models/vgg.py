"""VGG5: a five-block VGG-style network trained from scratch on Caltech-256 (seed report 002).

As reported: five blocks of 2-3 Conv(3x3) -> BatchNorm -> ReLU, each ending in a 2x2
max pool (224 -> 112 -> 56 -> 28 -> 14 -> 7), with 64, 128, 256, 512, 512 filters;
an adaptive 7x7 average pool, then dense layers 4096 -> 1024 -> classes with dropout.
The 2, 2, 3, 3, 3 convolutions per block are VGG-16's, and they put the report's
Grad-CAM layer ``features[42]`` exactly at the last ReLU (``block5_3_relu``).
Reported: 44.5% validation accuracy after 25 epochs of SGD + OneCycleLR.

Most of its ~122M parameters are in the first dense layer (25088 x 4096).
"""

from keras import layers

from keras_caltech.models.blocks import conv_bn_relu
from keras_caltech.models.layers import AdaptiveAveragePooling2D
from keras_caltech.models.registry import register_model

# (filters, convolutions) per block.
VGG5_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@register_model("vgg5", gradcam_layer="block5_3_relu", default_image_size=224,
                min_image_size=224, options=("dropout",))
def build_vgg5(x, num_classes, *, dropout=0.5):
    """Builds VGG5 on normalized images.

    Args:
        x: normalized images (batch, size, size, 3). The minimum, 224, is where block 5
            still has the 7x7 cells its adaptive pool averages; smaller inputs would
            only repeat pixels to fill them.
        num_classes: number of logits.
        dropout: dropout rate after each hidden dense layer.

    Returns:
        Logits (batch, num_classes).
    """
    for block, (filters, convolutions) in enumerate(VGG5_BLOCKS, start=1):
        for convolution in range(1, convolutions + 1):
            x = conv_bn_relu(x, filters, f"block{block}_{convolution}")
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)  # halves h and w
    x = AdaptiveAveragePooling2D((7, 7), name="adaptive_pool")(x)  # (batch, 7, 7, 512)
    x = layers.Flatten(name="flatten")(x)  # (batch, 25088)
    x = layers.Dense(4096, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="fc1_dropout")(x)
    x = layers.Dense(1024, activation="relu", name="fc2")(x)
    x = layers.Dropout(dropout, name="fc2_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)  # float32 under mixed precision
