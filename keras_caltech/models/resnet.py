"""ResNets trained from scratch: ResNet-18, ResNet-26 and ResNet-50 (seed reports 001, 004).

He et al. (2016): a 7x7/2 stem and a 3x3/2 max pool, then four stages of residual
blocks at 64, 128, 256, 512 base filters, each stage after the first halving the
feature map, then global average pooling. Stride 32 in all.

- ``resnet18``: basic blocks (two 3x3 convolutions), [2, 2, 2, 2].
- ``resnet26``: the report's ResNet-18 layout with every basic block replaced by a
  bottleneck block (1x1 -> 3x3 -> 1x1, 4x wider out). Reported: 58% top-1, 78% top-5.
- ``resnet50``: bottleneck blocks, [3, 4, 6, 3].

A stage's downsampling stride sits on the 3x3 convolution ("ResNet v1.5", as in
torchvision, which the reports trained with), not on the first 1x1 as in
``keras.applications.ResNet50``; parameter counts are the same either way, and equal
torchvision's exactly. Layer names follow Keras: ``conv3_block1_2_conv``,
``conv3_block1_0_conv`` for a projection shortcut, ``conv5_block2_out`` for a block's
output.
"""

from keras import layers

from keras_caltech.models.blocks import batch_norm, conv_bn_relu, pooled_classifier
from keras_caltech.models.registry import register_model

STAGE_FILTERS = (64, 128, 256, 512)
# Blocks that Grad-CAM and fine-tuning address by name: conv2_block1 ... conv5_blockN.
BLOCK_PATTERN = r"conv\d_block\d+|conv1"


def _conv_bn(x, filters, kernel_size, name, strides=1):
    """Conv (no bias) -> BatchNorm, no activation: the last layer of a residual branch."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    return batch_norm(f"{name}_bn")(x)


def _merge(x, shortcut, name):
    """Adds the residual branch to the shortcut and activates: ``{name}_add``, ``{name}_out``."""
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)


def _shortcut(x, filters, strides, name):
    """The identity, or a 1x1 projection ``{name}_0_conv/_0_bn`` where the shape changes."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, f"{name}_0", strides=strides)


def basic_block(x, filters, strides, name):
    """Two 3x3 convolutions: (batch, h, w, c) -> (batch, h / strides, w / strides, filters)."""
    shortcut = _shortcut(x, filters, strides, name)
    x = conv_bn_relu(x, filters, f"{name}_1", strides=strides)
    x = _conv_bn(x, filters, 3, f"{name}_2")
    return _merge(x, shortcut, name)


def bottleneck_block(x, filters, strides, name):
    """1x1 reduce -> 3x3 -> 1x1 expand, 4x wider out.

    (batch, h, w, c) -> (batch, h / strides, w / strides, 4 * filters).
    """
    shortcut = _shortcut(x, 4 * filters, strides, name)
    x = conv_bn_relu(x, filters, f"{name}_1", kernel_size=1)
    x = conv_bn_relu(x, filters, f"{name}_2", strides=strides)
    x = _conv_bn(x, 4 * filters, 1, f"{name}_3")
    return _merge(x, shortcut, name)


def _resnet(x, num_classes, block, blocks_per_stage, dropout):
    """Builds a ResNet on normalized images.

    Args:
        x: normalized images (batch, size, size, 3), size >= 17 (five halvings, each
            needing 2x2 pixels: 17 -> 9 -> 5 -> 3 -> 2 -> 1).
        num_classes: number of logits.
        block: :func:`basic_block` or :func:`bottleneck_block`.
        blocks_per_stage: number of blocks in stages conv2 ... conv5.
        dropout: dropout rate before the logits (the original has none).

    Returns:
        Logits (batch, num_classes).
    """
    x = conv_bn_relu(x, 64, "conv1", kernel_size=7, strides=2)  # (batch, s/2, s/2, 64)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)  # s/4
    for stage, (filters, num_blocks) in enumerate(zip(STAGE_FILTERS, blocks_per_stage), start=2):
        for index in range(1, num_blocks + 1):
            # The first block of stages 3-5 halves the map: s/4 -> s/8 -> s/16 -> s/32.
            strides = 2 if index == 1 and stage > 2 else 1
            x = block(x, filters, strides, f"conv{stage}_block{index}")
    return pooled_classifier(x, num_classes, dropout)


@register_model("resnet18", gradcam_layer="conv5_block2_out", default_image_size=224,
                min_image_size=17, options=("dropout",), block_pattern=BLOCK_PATTERN)
def build_resnet18(x, num_classes, *, dropout=0.0):
    """Builds ResNet-18 (basic blocks, [2, 2, 2, 2]); see :func:`_resnet`."""
    return _resnet(x, num_classes, basic_block, (2, 2, 2, 2), dropout)


@register_model("resnet26", gradcam_layer="conv5_block2_out", default_image_size=224,
                min_image_size=17, options=("dropout",), block_pattern=BLOCK_PATTERN)
def build_resnet26(x, num_classes, *, dropout=0.0):
    """Builds ResNet-26 (bottleneck blocks, [2, 2, 2, 2]); see :func:`_resnet`."""
    return _resnet(x, num_classes, bottleneck_block, (2, 2, 2, 2), dropout)


@register_model("resnet50", gradcam_layer="conv5_block3_out", default_image_size=224,
                min_image_size=17, options=("dropout",), block_pattern=BLOCK_PATTERN)
def build_resnet50(x, num_classes, *, dropout=0.0):
    """Builds ResNet-50 (bottleneck blocks, [3, 4, 6, 3]); see :func:`_resnet`."""
    return _resnet(x, num_classes, bottleneck_block, (3, 4, 6, 3), dropout)
