"""Building blocks that several architectures share.

Each function takes and returns Keras tensors of a Functional graph and names every
layer it adds from a ``name`` prefix, so layer names stay stable and readable
(``block3_1_conv``, ``head_pool``) for Grad-CAM, fine-tuning and weight transfer.
"""

from keras import layers

from keras_caltech.models.layers import FusedBatchNormalization


def batch_norm(name):
    """The BatchNormalization of every architecture trained from scratch, synchronized across replicas.

    Under a multi-replica tf.distribute strategy each replica sees 1/N of the global
    batch; synchronized statistics cover the whole global batch, so N replicas train as
    one device does (training/distribute.py). On one device it is the same normalization
    (computed as E[x^2] - E[x]^2, in float32 even under mixed precision). The
    ``keras.applications`` backbones keep their own BatchNorm layers: transfer keeps
    them frozen, in inference mode, where no batch statistics are computed. On one
    replica it runs TensorFlow's fused kernel (models/layers.FusedBatchNormalization).
    """
    return FusedBatchNormalization(synchronized=True, name=name)


def conv_bn_relu(x, filters, name, kernel_size=3, strides=1):
    """Conv (no bias: BatchNorm adds one) -> BatchNorm -> ReLU, named ``{name}_conv/_bn/_relu``.

    Args:
        x: feature map (batch, height, width, channels).
        filters: output channels.
        name: prefix of the three layer names.
        kernel_size: side of the square kernel.
        strides: convolution stride; "same" padding keeps ``ceil(size / strides)``.

    Returns:
        Feature map (batch, ceil(height / strides), ceil(width / strides), filters), >= 0.
    """
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def pooled_classifier(x, num_classes, dropout):
    """Global average pooling -> Dropout -> Dense logits: the head of every GAP network.

    The layers are named ``head_pool``, ``head_dropout`` and ``logits``;
    :func:`keras_caltech.models.transfer.freeze_backbone` relies on these names.

    Args:
        x: last feature map (batch, height, width, channels).
        num_classes: number of logits.
        dropout: fraction of pooled features dropped while training, in [0, 1).

    Returns:
        Logits (batch, num_classes), no softmax.
    """
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)  # (batch, channels)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)  # float32 under mixed precision
