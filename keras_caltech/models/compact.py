"""CompactResNet: the default network for a user's own data, sized for a CPU.

Not from a report: the published Caltech networks are either small with a dense head
(MyCNN, whose Flatten -> Dense layer learns every object position separately) or too
slow to train on a laptop (ResNet-18 at 224 px). This one keeps what makes ResNets
train reliably on any data, and little else:

- a 3x3 stride-2 stem, then four stages of one basic residual block each, at 32, 64,
  128 and 256 filters, stages 3-5 halving the map: stride 16 in all (a 128 px image
  ends as an 8x8 map, 64 px as 4x4). A stem at full resolution (same cost) was tried
  and left out: on small objects in clutter it stayed at chance for ten epochs;
- global average pooling, so an object counts the same wherever it is in the frame;
- BatchNorm with PyTorch's momentum (``blocks.batch_norm``), so the statistics used at
  evaluation are learned within the first hundred steps. Starting each block's last
  BatchNorm scale at 0 (torchvision's ``zero_init_residual``) was tried and left out:
  on small objects in clutter it kept training near chance for ten epochs;
- 1.2M parameters, and about as many multiply-adds per image as MyCNN at the same size
  (about 64M at 64 px against MyCNN's 62M, counted layer by layer).

Layer names follow the ResNets' (``conv3_block1_out``), so fine-tuning by blocks and
Grad-CAM address it the same way.
"""

from keras_caltech.models.blocks import conv_bn_relu, pooled_classifier
from keras_caltech.models.registry import register_model
from keras_caltech.models.resnet import BLOCK_PATTERN, basic_block

STAGE_FILTERS = (32, 64, 128, 256)


@register_model("compact_resnet", gradcam_layer="conv5_block1_out", default_image_size=128,
                min_image_size=9, options=("dropout",), block_pattern=BLOCK_PATTERN)
def build_compact_resnet(x, num_classes, *, dropout=0.1):
    """Builds CompactResNet on normalized images.

    Args:
        x: normalized images (batch, size, size, 3), size >= 9 (four halvings, each
            needing 2x2 pixels: 9 -> 5 -> 3 -> 2 -> 1).
        num_classes: number of logits.
        dropout: fraction of the pooled features dropped while training.

    Returns:
        Logits (batch, num_classes).
    """
    x = conv_bn_relu(x, STAGE_FILTERS[0], "conv1", strides=2)  # (batch, s/2, s/2, 32)
    for stage, filters in enumerate(STAGE_FILTERS, start=2):
        # conv2 keeps s/2; conv3, conv4 and conv5 halve it: s/4, s/8, s/16.
        x = basic_block(x, filters, 2 if stage > 2 else 1, f"conv{stage}_block1")
    return pooled_classifier(x, num_classes, dropout)  # (batch, num_classes)
