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


@keras.saving.register_keras_serializable(package="keras_caltech")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Keras 3 normalizes with separate mean, variance, subtract, multiply and add ops (and
    as many again in the gradient); on a CPU each is a pass over the whole feature map.
    ``tf.nn.fused_batch_norm`` does it in one kernel (oneDNN's on x86), which makes the
    training step markedly faster (``python benchmarks/run.py``). Same weights, same
    configuration and the same moving-average update as the Keras layer, so it is a
    drop-in replacement; anything the fused kernel does not cover (masks, renorm,
    statistics synchronized across replicas, no scale or centre, an axis other than the last of a 4-D
    input, another backend) goes through the Keras implementation.

    Input shape: (batch, height, width, channels). Output: same shape, compute dtype.
    """

    def _fusable(self, inputs, mask):
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self._cross_replica() and self.scale and self.center
                and len(inputs.shape) == 4 and self.axis in (3, -1))

    def _cross_replica(self):
        """True when synchronized statistics must span several replicas (Keras' path)."""
        if not self.synchronized:
            return False
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        return context is None or context.num_replicas_in_sync > 1

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # Like the Keras layer, statistics in float32 under a mixed-precision policy: the
        # kernel takes bfloat16/float16 images with float32 scale, offset and statistics
        # and computes in float32 inside, so such images go in as they are (casting them
        # to float32 and back cost 7% of a bfloat16 ResNet-18 step).
        images = inputs if inputs.dtype in ("bfloat16", "float16") else ops.cast(inputs, "float32")
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                images, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC",
                is_training=True)
            # The kernel returns the unbiased (n - 1) variance; Keras averages the biased one.
            count = ops.cast(ops.prod(ops.shape(images)[:3]), "float32")
            variance = variance * (count - 1.0) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                images, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_caltech")
class AdaptiveAveragePooling2D(keras.layers.AdaptiveAveragePooling2D):
    """``keras.layers.AdaptiveAveragePooling2D``, as one average pool when the sides divide evenly.

    Keras 3.15 pools adaptively with stride-1 pools of both window sizes over the whole
    feature map, then gathers the rows and columns it needs (in the gradient too), which
    one average pool does faster. When each output cell covers the same whole number of
    input rows and columns (28 -> 4: 7 each), adaptive pooling is exactly an average pool with that window and
    stride, so it is computed as one; other sizes go through Keras' implementation.
    """

    def call(self, inputs):
        if self.data_format == "channels_last":
            height, width = inputs.shape[1], inputs.shape[2]
        else:
            height, width = inputs.shape[2], inputs.shape[3]
        out_height, out_width = self.output_size
        if height and width and height % out_height == 0 and width % out_width == 0:
            window = (height // out_height, width // out_width)
            return ops.average_pool(inputs, window, strides=window, padding="valid", data_format=self.data_format)
        return super().call(inputs)
