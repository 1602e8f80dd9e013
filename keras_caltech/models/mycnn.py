"""MyCNN: the first published Caltech-256 baseline (4 conv blocks and a dense head).

As reported: Conv(3x3) -> BatchNorm -> ReLU -> MaxPool(2) with 32, 64, 128, 256
filters, the 4th block ending in an adaptive 4x4 average pool instead, then
Flatten -> Dense(512) -> ReLU -> Dropout(0.5) -> Dense(num_classes). Reported: 30.5%
validation accuracy with Adam, 43.25% with SGD, on Caltech-256 at 224 px.

The report trained in PyTorch, and where PyTorch's defaults differ from Keras' in a way
that changes training they are PyTorch's here: every kernel starts from PyTorch's
``kaiming_uniform_(a=sqrt(5))`` (``blocks.torch_default_initializer``), and BatchNorm
keeps PyTorch's momentum and epsilon (``blocks.batch_norm``).
"""

from keras import layers

from keras_caltech.models.blocks import conv_bn_relu, torch_default_initializer
from keras_caltech.models.layers import AdaptiveAveragePooling2D
from keras_caltech.models.registry import register_model


@register_model("mycnn", gradcam_layer="block4_relu", default_image_size=224, min_image_size=32,
                options=("dropout",))
def build_mycnn(x, num_classes, *, dropout=0.5):
    """Builds MyCNN on normalized images ``x`` (batch, h, w, 3); returns logits (batch, classes)."""
    for block, filters in enumerate((32, 64, 128), start=1):
        x = conv_bn_relu(x, filters, f"block{block}", kernel_initializer=torch_default_initializer())
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)  # halves h and w
    x = conv_bn_relu(x, 256, "block4", kernel_initializer=torch_default_initializer())
    x = AdaptiveAveragePooling2D((4, 4), name="block4_pool")(x)  # (batch, 4, 4, 256)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", kernel_initializer=torch_default_initializer(), name="fc1")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, dtype="float32", kernel_initializer=torch_default_initializer(),
                        name="logits")(x)  # float32 under mixed precision
