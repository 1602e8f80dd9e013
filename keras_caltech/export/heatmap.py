"""Grad-CAM written as graph ops, so the exported SavedModel can explain its own answers.

The explanation module (``keras_caltech.explain``) holds the project's Grad-CAM for
figures and scoring. The serving graph cannot call it: that module normalizes in NumPy
after the graph has run. This is the same definition written in TensorFlow ops only
(Selvaraju et al. 2017), step for step:

    A = activations of the registered Grad-CAM layer          (batch, h, w, channels)
    y = logit of the explained class (the predicted one)      (batch,)
    w_k = mean over h, w of dy/dA_k                          (batch, channels)
    map = ReLU(sum_k w_k A_k), divided by its maximum          (batch, h, w) in [0, 1]
    heatmap = map resized bilinearly to the model's input size, clipped to [0, 1]

A map with no positive part (the image argues against the class) is all zeros and
flagged ``empty``, never NaN. "No positive part" uses the explain module's tolerance,
so both agree on near-zero maps too; tests/test_export.py checks the exported heatmap
equals the explain module's for the same images.
"""

import keras
import tensorflow as tf

# A map whose positive part is below this share of its largest magnitude is rounding
# noise around zero, not evidence (the explain module's rule).
EMPTY_TOLERANCE = 1e-6


def gradcam_model(model, layer_name):
    """A model sharing ``model``'s weights that outputs [layer activations, logits].

    Args:
        model: a registered (flat Functional) classifier: images 0-255 in, logits out.
        layer_name: its 4-D Grad-CAM layer (the registry's ``gradcam_layer``).

    Returns:
        A ``keras.Model``: (batch, size, size, 3) images -> [(batch, h, w, channels), (batch, classes)].
    """
    return keras.Model(model.inputs, [model.get_layer(layer_name).output, model.outputs[0]],
                       name=f"{model.name}_gradcam")


def gradcam_heatmaps(taps, images):
    """Grad-CAM heatmaps of the predicted classes, in graph-compatible TensorFlow ops.

    Args:
        taps: a model from :func:`gradcam_model`.
        images: float32 (batch, size, size, 3), RGB 0-255, the model's input size.

    Returns:
        A dict: ``class_index`` int32 (batch,), the predicted (explained) class;
        ``logits`` float32 (batch, classes); ``heatmap`` float32 (batch, size, size) in
        [0, 1]; ``empty`` bool (batch,), True where no location supports the class.
    """
    with tf.GradientTape() as tape:
        # Watching the images records every op after them, so the gradient reaches the
        # activations even if the model's weights were frozen (not trainable).
        tape.watch(images)
        activations, logits = taps(images, training=False)  # (b, h, w, c), (b, classes)
        class_index = tf.argmax(logits, axis=-1, output_type=tf.int32)
        scores = tf.gather(logits, class_index, batch_dims=1)  # (b,)
    # Images are independent at inference (BatchNorm uses its moving statistics), so the
    # gradient of the summed scores holds each image's own gradient.
    gradients = tape.gradient(scores, activations)  # (b, h, w, c)
    weights = tf.reduce_mean(gradients, axis=(1, 2))  # (b, c)
    maps = tf.einsum("bhwc,bc->bhw", activations, weights)  # (b, h, w), before the ReLU
    positive = tf.nn.relu(maps)
    peak = tf.reduce_max(positive, axis=(1, 2))  # (b,)
    empty = peak <= EMPTY_TOLERANCE * tf.reduce_max(tf.abs(maps), axis=(1, 2))
    # An empty map is all zeros: never 0/0 = NaN, and no rounding noise blown up to 1.
    normalized = tf.where(empty[:, None, None], 0.0, tf.math.divide_no_nan(positive, peak[:, None, None]))
    size = tf.shape(images)[1:3]
    heatmap = tf.image.resize(normalized[..., None], size, method="bilinear")[..., 0]  # (b, size, size)
    return {"class_index": class_index, "logits": logits,
            "heatmap": tf.clip_by_value(heatmap, 0.0, 1.0), "empty": empty}
