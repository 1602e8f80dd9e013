"""CompactResNet: the default network for a user's own data, sized for a CPU.

Not from a report: the published Caltech networks are either small with a dense head
(MyCNN, whose Flatten -> Dense layer learns every object position separately) or too
slow to train on a laptop (ResNet-18 at 224 px). This one keeps what makes ResNets
train reliably on any data, and what keeps thin detail at the small image sizes a CPU
affords:

- a 3x3 convolution at full resolution (32 filters), then four stages, each a 2x2 max
  pool and one basic residual block, at 32, 64, 128 and 256 filters. Max pooling keeps
  a one-pixel stroke that a stride-2 convolution can step over; a stage skips its pool
  when the map would fall below 4x4, so the last map is 4x4 or more (stride 16 from
  64 px up: 4x4 at 64 px, 8x8 at 128 px; stride 8 at 32-63 px);
- global average pooling, so an object counts the same wherever it is in the frame;
- BatchNorm with PyTorch's momentum (``blocks.batch_norm``), so the statistics used at
  evaluation are learned within the first hundred steps;
- 1.2M parameters, and about 70M multiply-adds per image at 64 px (MyCNN: 62M).

Chosen on the recipe bench (``python benchmarks/recipes.py``; docs/recipes.md) against a
stride-2 stem (the earlier CompactResNet), stride-2 stages, two blocks per stage, a
full-resolution first stage and a plain conv-pool stack: the stride-2 variants stayed
near chance on thin glyphs and small objects, and the wider ones cost 2-4x the time
for gains within the bench's noise.

Layer names follow the ResNets' (``conv3_block1_out``), so fine-tuning by blocks and
Grad-CAM address it the same way. The pools hold no weights, so a model built at
another size (progressive resizing) has the same weights.
"""

from keras import layers

from keras_caltech.models.blocks import conv_bn_relu, pooled_classifier
from keras_caltech.models.registry import register_model
from keras_caltech.models.resnet import BLOCK_PATTERN, basic_block

STAGE_FILTERS = (32, 64, 128, 256)
MIN_FINAL_SIDE = 4  # a stage pools only while the map stays at least this wide


@register_model("compact_resnet", gradcam_layer="conv5_block1_out", default_image_size=128,
                min_image_size=8, options=("dropout",), block_pattern=BLOCK_PATTERN)
def build_compact_resnet(x, num_classes, *, dropout=0.1):
    """Builds CompactResNet on normalized images.

    Args:
        x: normalized images (batch, size, size, 3), size >= 8.
        num_classes: number of logits.
        dropout: fraction of the pooled features dropped while training.

    Returns:
        Logits (batch, num_classes).
    """
    x = conv_bn_relu(x, STAGE_FILTERS[0], "conv1")  # (batch, s, s, 32)
    for stage, filters in enumerate(STAGE_FILTERS, start=2):
        if min(x.shape[1], x.shape[2]) // 2 >= MIN_FINAL_SIDE:
            x = layers.MaxPooling2D(name=f"conv{stage}_pool")(x)  # halves the map
        x = basic_block(x, filters, 1, f"conv{stage}_block1")
    return pooled_classifier(x, num_classes, dropout)  # (batch, num_classes)
