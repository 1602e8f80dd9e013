"""The fused BatchNormalization computes what Keras' own layer computes, only faster."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_caltech.models.layers import FusedBatchNormalization


def twin_layers(channels=5, dtype=None):
    """A Keras BatchNormalization and a FusedBatchNormalization with the same random weights."""
    rng = np.random.default_rng(0)
    reference, fused = keras.layers.BatchNormalization(dtype=dtype), FusedBatchNormalization(dtype=dtype)
    for layer in (reference, fused):
        layer.build((None, 6, 7, channels))
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(0, 1, channels),
               rng.normal(0, 1, channels), rng.uniform(0.5, 2.0, channels)]  # gamma, beta, mean, var
    for layer in (reference, fused):
        layer.set_weights([w.astype(np.float32) for w in weights])
    return reference, fused


def outputs_and_gradients(layer, images, training):
    """The layer's outputs and the gradients of a weighted sum of them (input, gamma, beta)."""
    images = tf.convert_to_tensor(images)
    weights = tf.reshape(tf.sin(tf.range(tf.size(images), dtype=tf.float32)), images.shape)
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = layer(images, training=training)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * weights)
    gradients = tape.gradient(loss, [images, layer.gamma, layer.beta])
    return outputs, gradients


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_fused_batchnorm_matches_keras_outputs_gradients_and_moving_statistics(training, compiled):
    images = np.random.default_rng(1).normal(3.0, 2.0, (4, 6, 7, 5)).astype(np.float32)
    reference, fused = twin_layers()
    results = []
    for layer in (reference, fused):
        function = tf.function(outputs_and_gradients, autograph=False) if compiled else outputs_and_gradients
        outputs, gradients = function(layer, images, training)
        results.append((outputs.numpy(), [gradient.numpy() for gradient in gradients]))
    (reference_out, reference_grads), (fused_out, fused_grads) = results
    np.testing.assert_allclose(fused_out, reference_out, rtol=1e-4, atol=1e-4)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads):
        np.testing.assert_allclose(fused_grad, reference_grad, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fused.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-5)
    moved = not np.allclose(fused.moving_mean.numpy(), twin_layers()[1].moving_mean.numpy())
    assert moved == training  # the statistics move in training only


@pytest.mark.parametrize("training", [True, False])
def test_under_mixed_bfloat16_the_kernel_takes_bfloat16_images_without_casting_them(training):
    images = tf.cast(np.random.default_rng(1).normal(3.0, 2.0, (4, 6, 7, 5)), tf.bfloat16)
    reference, fused = twin_layers(dtype="mixed_bfloat16")
    (reference_out, reference_grads), (fused_out, fused_grads) = (
        outputs_and_gradients(layer, images, training) for layer in (reference, fused))
    assert fused_out.dtype == tf.bfloat16 and fused.gamma.dtype == tf.float32
    # Both compute in float32 and round the output to bfloat16 (8 bits of mantissa).
    np.testing.assert_allclose(tf.cast(fused_out, tf.float32), tf.cast(reference_out, tf.float32),
                               rtol=2e-2, atol=2e-2)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads):
        np.testing.assert_allclose(tf.cast(fused_grad, tf.float32), tf.cast(reference_grad, tf.float32),
                                   rtol=3e-2, atol=5e-2)
    np.testing.assert_allclose(fused.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=1e-4)
    np.testing.assert_allclose(fused.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-4)
    graph = tf.function(lambda x: fused(x, training=training)).get_concrete_function(
        tf.TensorSpec(images.shape, tf.bfloat16)).graph
    feature_map_casts = [op.name for op in graph.get_operations() if op.type == "Cast" and op.inputs[0].shape.rank == 4]
    assert feature_map_casts == []  # casting them to float32 and back cost 7% of a bf16 step


def test_fused_batchnorm_falls_back_to_keras_where_the_kernel_does_not_apply():
    sequences = np.random.default_rng(2).normal(size=(3, 8, 4)).astype(np.float32)  # 3-D input
    reference, fused = keras.layers.BatchNormalization(), FusedBatchNormalization()
    np.testing.assert_allclose(fused(sequences, training=True), reference(sequences, training=True),
                               rtol=1e-5, atol=1e-5)


def test_fused_batchnorm_is_still_a_keras_batchnormalization_and_round_trips_its_config():
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-4, name="block1_bn")
    assert isinstance(layer, keras.layers.BatchNormalization)  # freezing code relies on it
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is FusedBatchNormalization
    assert (clone.momentum, clone.epsilon, clone.name) == (0.9, 1e-4, "block1_bn")
