"""Custom layers that the registered models share.

Each is registered as Keras-serializable, so a saved ``.keras`` model reloads in safe
mode without any Python lambda.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_caltech")
class ImageNormalization(keras.layers.Layer):
    """Maps RGB images in 0-255 to the model's input scale: ``(x[..., order] - mean) / std``.

    Living inside the model, it makes training, evaluation, explanation and serving
    normalize identically: every caller feeds the same 0-255 RGB images.

    Args:
        mean: three per-channel means in 0-255 units, in the order after reversal.
        std: three per-channel standard deviations in 0-255 units.
        reverse_channels: feed BGR to the rest of the model (Caffe-trained backbones).

    Input shape: (batch, height, width, 3), float, 0-255. Output: same shape, float32.
    """

    def __init__(self, mean, std, reverse_channels=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(value) for value in mean]
        self.std = [float(value) for value in std]
        self.reverse_channels = bool(reverse_channels)

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.reverse_channels:
            images = ops.flip(images, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (images - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std, reverse_channels=self.reverse_channels)
        return config
