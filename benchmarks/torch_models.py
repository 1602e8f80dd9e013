"""PyTorch twins of our MyCNN and ResNet-18, layer for layer, for the training-step comparison.

Same layers, widths, strides, padding and parameter counts as keras_caltech.models
(checked against the Keras model's count by the benchmark), so the two frameworks do
the same arithmetic: the input normalization, Conv (no bias) -> BatchNorm -> ReLU
blocks, max pooling, the adaptive 4x4 pool and dense head of MyCNN, the v1.5 basic
blocks (stride on the 3x3) of ResNet-18. Only imported when torch is installed.
"""

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std on 0-255 images, like our ImageNormalization layer."""

    def __init__(self, mean=(127.5,) * 3, std=(127.5,) * 3):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images):
        return (images - self.mean) / self.std


def conv_bn_relu(in_channels, out_channels, kernel_size=3, stride=1):
    """Conv (no bias, "same" padding for odd kernels) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MyCNN(nn.Module):
    """keras_caltech.models.mycnn: 4 conv blocks (32, 64, 128, 256), adaptive 4x4 pool, dense 512."""

    def __init__(self, num_classes, dropout=0.5):
        super().__init__()
        blocks, channels = [Normalize()], 3
        for filters in (32, 64, 128):
            blocks += [conv_bn_relu(channels, filters), nn.MaxPool2d(2)]
            channels = filters
        blocks += [conv_bn_relu(channels, 256), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                   nn.Linear(256 * 16, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
                   nn.Linear(512, num_classes)]
        self.layers = nn.Sequential(*blocks)

    def forward(self, images):
        return self.layers(images)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the identity or a 1x1 projection shortcut."""

    def __init__(self, in_channels, filters, stride):
        super().__init__()
        self.branch = nn.Sequential(
            conv_bn_relu(in_channels, filters, 3, stride),
            nn.Conv2d(filters, filters, 3, 1, padding=1, bias=False), nn.BatchNorm2d(filters))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != filters:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, filters, 1, stride, bias=False),
                                          nn.BatchNorm2d(filters))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.shortcut(x) + self.branch(x))


class ResNet18(nn.Module):
    """keras_caltech.models.resnet.build_resnet18: 7x7/2 stem, 3x3/2 pool, [2, 2, 2, 2] basic blocks."""

    def __init__(self, num_classes):
        super().__init__()
        layers, channels = [Normalize(), conv_bn_relu(3, 64, 7, 2), nn.MaxPool2d(3, 2, padding=1)], 64
        for stage, filters in enumerate((64, 128, 256, 512)):
            for index in range(2):
                stride = 2 if index == 0 and stage > 0 else 1
                layers.append(BasicBlock(channels, filters, stride))
                channels = filters
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images):
        return self.layers(images)


TORCH_MODELS = {"mycnn": MyCNN, "resnet18": ResNet18}


def count_parameters(model):
    """Trainable parameters plus BatchNorm running statistics, as Keras counts them."""
    return (sum(parameter.numel() for parameter in model.parameters())
            + sum(buffer.numel() for name, buffer in model.named_buffers()
                  if name.endswith(("running_mean", "running_var"))))
