"""Two narrow Xception networks trained from scratch on Caltech-256 (seed report 001).

Xception (Chollet, 2017) is an entry flow that downsamples with residual blocks of
depthwise-separable convolutions, a middle flow of 8 residual blocks at 728 channels,
and an exit flow. The report shrank it to fit a small parameter budget:

- ``xception_small`` (~1.9M parameters): 5 middle blocks of 256 channels. Reported
  45% top-1, 67.8% top-5.
- ``xception_medium`` (~5.9M): middle blocks of 512 channels and only the first exit
  block. Reported 55.6% top-1, 76.5% top-5 after adding dropout and weight decay.

Both end in global average pooling and a dense classifier. The report does not say
how the entry and exit blocks were narrowed; here the last entry block widens to the
middle-flow width, and the exit block widens to 512 channels (small: twice its middle
width, as Xception's exit block widens 728 -> 1024 by about that much) or 728 (medium:
Xception's own middle-flow width). These are the natural widths that give the reported
sizes: 1.885M (small, -0.8%) and 5.949M (medium, +0.8%) parameters at 256 classes,
counted as PyTorch does (trainable only; Keras adds the BatchNorm statistics). Doubling
the medium's 512 to 1024 would give 6.33M (+7%).

Layer names follow ``keras.applications.Xception`` (``block4_sepconv2_bn``) and also
name its shortcut layers (``block4_residual_conv``), which Keras leaves unnamed.
"""

from keras import layers

from keras_caltech.models.blocks import batch_norm, pooled_classifier
from keras_caltech.models.registry import register_model

# Entry-flow blocks 2 and 3 keep Xception's widths; block 4 widens to the middle flow.
ENTRY_FILTERS = (128, 256)


def _separable_bn(x, filters, name, activate_first=True):
    """[ReLU] -> SeparableConv(3x3, no bias) -> BatchNorm, named {name}_act, {name}, {name}_bn."""
    if activate_first:
        x = layers.ReLU(name=f"{name}_act")(x)
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    return batch_norm(f"{name}_bn")(x)


def _downsampling_block(x, filters, block, activate_first=True):
    """An entry or exit block: two separable convs, a 3x3/2 max pool, and a 1x1/2 shortcut.

    Args:
        x: feature map (batch, h, w, channels), not yet activated.
        filters: widths of the two separable convolutions.
        block: block number, for layer names.
        activate_first: False only for block 2, whose input block 1 already activated.

    Returns:
        Feature map (batch, ceil(h / 2), ceil(w / 2), filters[1]), not activated.
    """
    residual = layers.Conv2D(filters[1], 1, strides=2, padding="same", use_bias=False,
                             name=f"block{block}_residual_conv")(x)
    residual = batch_norm(f"block{block}_residual_bn")(residual)
    x = _separable_bn(x, filters[0], f"block{block}_sepconv1", activate_first)
    x = _separable_bn(x, filters[1], f"block{block}_sepconv2")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"block{block}_pool")(x)
    return layers.Add(name=f"block{block}_add")([x, residual])


def _xception(x, num_classes, *, middle_channels, middle_blocks, exit_channels, dropout):
    """Builds a narrowed Xception: entry flow, middle flow, one exit block, GAP head.

    Args:
        x: normalized images (batch, size, size, 3), size >= 23 (the two unpadded 3x3
            convolutions, then four halvings that each need 2x2 pixels).
        num_classes: number of logits.
        middle_channels: width of the middle flow (728 in Xception).
        middle_blocks: number of middle-flow blocks (8 in Xception).
        exit_channels: width of the exit block's output (1024 in Xception).
        dropout: dropout rate before the logits.

    Returns:
        Logits (batch, num_classes).
    """
    # Block 1: unpadded convolutions, as in Xception: 299 -> 149 -> 147.
    x = layers.Conv2D(32, 3, strides=2, use_bias=False, name="block1_conv1")(x)
    x = batch_norm("block1_conv1_bn")(x)
    x = layers.ReLU(name="block1_conv1_act")(x)
    x = layers.Conv2D(64, 3, use_bias=False, name="block1_conv2")(x)
    x = batch_norm("block1_conv2_bn")(x)
    x = layers.ReLU(name="block1_conv2_act")(x)

    # Entry flow: three halvings, (batch, s, s, 64) -> (batch, s/8, s/8, middle_channels).
    for block, filters in enumerate(ENTRY_FILTERS + (middle_channels,), start=2):
        x = _downsampling_block(x, (filters, filters), block, activate_first=block > 2)

    # Middle flow: residual blocks of three separable convolutions, same shape.
    first_middle = 2 + len(ENTRY_FILTERS) + 1
    for block in range(first_middle, first_middle + middle_blocks):
        residual = x
        for convolution in (1, 2, 3):
            x = _separable_bn(x, middle_channels, f"block{block}_sepconv{convolution}")
        x = layers.Add(name=f"block{block}_add")([x, residual])

    # Exit block: one more halving, (batch, s/16, s/16, exit_channels).
    x = _downsampling_block(x, (middle_channels, exit_channels), first_middle + middle_blocks)
    x = layers.ReLU(name="exit_act")(x)  # the Grad-CAM layer: same name for both sizes
    return pooled_classifier(x, num_classes, dropout)


@register_model("xception_small", gradcam_layer="exit_act", default_image_size=224,
                min_image_size=23, options=("dropout",), block_pattern=r"block\d+")
def build_xception_small(x, num_classes, *, dropout=0.0):
    """Builds Xception (1.9M): 5 middle blocks of 256 channels; see :func:`_xception`."""
    return _xception(x, num_classes, middle_channels=256, middle_blocks=5, exit_channels=512, dropout=dropout)


@register_model("xception_medium", gradcam_layer="exit_act", default_image_size=224,
                min_image_size=23, options=("dropout",), block_pattern=r"block\d+")
def build_xception_medium(x, num_classes, *, dropout=0.0):
    """Builds Xception (5.9M): 5 middle blocks of 512 channels; see :func:`_xception`."""
    return _xception(x, num_classes, middle_channels=512, middle_blocks=5, exit_channels=728, dropout=dropout)
