"""Building blocks that several architectures share.

Each function takes and returns Keras tensors of a Functional graph and names every
layer it adds from a ``name`` prefix, so layer names stay stable and readable
(``block3_1_conv``, ``head_pool``) for Grad-CAM, fine-tuning and weight transfer.
"""

import keras
from keras import layers

from keras_caltech.models.layers import FusedBatchNormalization

# PyTorch's BatchNorm2d defaults, which the from-scratch reports trained with: its
# momentum=0.1 weights the new batch by 0.1, Keras' momentum the old average, hence 0.9.
# Keras' own 0.99 leaves the moving statistics mostly at their initial values after a
# few hundred steps, so a short run evaluates with statistics it never learned.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def torch_default_initializer():
    """PyTorch's default Conv2d/Linear kernel initializer, ``kaiming_uniform_(a=sqrt(5))``.

    That is uniform in +-sqrt(1 / fan_in) (gain sqrt(2 / (1 + 5)) times sqrt(3 / fan_in)),
    a variance of 1 / (3 fan_in): a sixth of He's, a third of LeCun's. Keras' default,
    Glorot uniform, also counts fan_out.
    """
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


def batch_norm(name):
    """The BatchNormalization of every architecture trained from scratch, synchronized across replicas.

    Momentum and epsilon are PyTorch's (:data:`BATCH_NORM_MOMENTUM`).

    Under a multi-replica tf.distribute strategy each replica sees 1/N of the global
    batch; synchronized statistics cover the whole global batch, so N replicas train as
    one device does (training/distribute.py). On one device it is the same normalization
    (computed as E[x^2] - E[x]^2, in float32 even under mixed precision). The
    ``keras.applications`` backbones keep their own BatchNorm layers: transfer keeps
    them frozen, in inference mode, where no batch statistics are computed. On one
    replica it runs TensorFlow's fused kernel (models/layers.FusedBatchNormalization).
    """
    return FusedBatchNormalization(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                                   synchronized=True, name=name)


def conv_bn_relu(x, filters, name, kernel_size=3, strides=1, kernel_initializer="glorot_uniform"):
    """Conv (no bias: BatchNorm adds one) -> BatchNorm -> ReLU, named ``{name}_conv/_bn/_relu``.

    Args:
        x: feature map (batch, height, width, channels).
        filters: output channels.
        name: prefix of the three layer names.
        kernel_size: side of the square kernel.
        strides: convolution stride; "same" padding keeps ``ceil(size / strides)``.
        kernel_initializer: the convolution's (Keras' default unless a model says otherwise).

    Returns:
        Feature map (batch, ceil(height / strides), ceil(width / strides), filters), >= 0.
    """
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      kernel_initializer=kernel_initializer, name=f"{name}_conv")(x)
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
    return dropout_and_logits(x, num_classes, dropout)


def dropout_and_logits(x, num_classes, dropout):
    """Dropout -> Dense logits, named ``head_dropout`` and ``logits``: a head's new last layer.

    Args:
        x: features (batch, features).
        num_classes: number of logits.
        dropout: fraction of the features dropped while training, in [0, 1).

    Returns:
        Logits (batch, num_classes), no softmax.
    """
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)  # float32 under mixed precision
