"""Grad-CAM heatmaps/s: ours batched, the keras-io recipe one image at a time, xplique.

    python benchmarks/run.py --sections gradcam [--smoke]

All three explain the same untrained model (speed and agreement do not depend on the
weights), the same layer (the model's registered Grad-CAM layer) and the same class per
image (our predicted one), and all three produce maps at the input resolution:

- ours: ``keras_caltech.explain.GradCam`` on the whole batch (one compiled graph), then
  :func:`keras_caltech.explain.upsample` to the image size;
- the keras-io recipe: a model returning the layer's activations and the logits, then
  one eager ``GradientTape`` per image (written here from the published method);
- xplique: ``xplique.attributions.GradCAM(model, conv_layer=...)``, ``explain(images,
  one-hot targets)``; optional, see benchmarks/requirements.txt.

Agreement: xplique returns the ReLU'd map bicubically resized to the image, not divided
by its maximum; ours is divided by its maximum at the feature-map resolution. So ours
is resized with the same bicubic resize and compared by Pearson correlation, which
ignores the scale. Images whose map is empty in either (nothing survives the ReLU) have
no correlation and are left out of the mean (their count is reported).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_caltech.explain import GradCam, upsample
from keras_caltech.models import create_model, get_model_entry
from timing import Row, interleaved, rate, skipped

NUM_CLASSES = 256
MODEL_TITLES = {"mycnn": "MyCNN", "resnet50": "ResNet-50"}


def keras_io_recipe(model, layer_name):
    """One-image-at-a-time Grad-CAM as the keras-io example does it: eager tape per image.

    Returns:
        f(images (n, h, w, 3), class_indices (n,)) -> maps (n, fh, fw) in [0, 1].
    """
    grad_model = keras.Model(model.input, [model.get_layer(layer_name).output, model.output])

    def explain(images, class_indices):
        maps = []
        for image, class_index in zip(images, class_indices):
            with tf.GradientTape() as tape:
                activations, logits = grad_model(image[None])  # (1, fh, fw, c), (1, classes)
                score = logits[:, class_index]
            gradients = tape.gradient(score, activations)
            weights = tf.reduce_mean(gradients, axis=(0, 1, 2))  # (c,)
            heatmap = tf.squeeze(activations[0] @ weights[..., None], -1)  # (fh, fw)
            heatmap = tf.maximum(heatmap, 0) / (tf.reduce_max(heatmap) + 1e-12)
            maps.append(heatmap.numpy())
        return np.stack(maps)

    return explain


def xplique_explainer():
    """(xplique's GradCAM class, "") or (None, why it is not available)."""
    try:
        from xplique.attributions import GradCAM
    except ImportError as error:
        return None, (f"xplique is not importable ({error}); every xplique release pins TensorFlow "
                      "<= 2.20, see benchmarks/requirements.txt for installing it beside TF 2.21")
    return GradCAM, ""


def discard(function):
    """``function`` returning None, so that timing.interleaved times the whole call."""
    def call():
        function()

    return call


def correlations(ours, theirs):
    """Per-image Pearson correlations of two (n, h, w) map stacks, skipping constant maps."""
    values = []
    for a, b in zip(ours, theirs):
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            values.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return np.array(values)


def run(options, context):
    """The section's rows: speed against the keras-io recipe and xplique, and agreement of the maps."""
    rows = []
    xplique_gradcam, xplique_reason = xplique_explainer()
    size, batch = options.gradcam_size, options.gradcam_batch
    images = np.random.default_rng(3).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    for model_name in options.gradcam_models:
        title = f"{MODEL_TITLES.get(model_name, model_name)} {size} px, batch {batch}"
        keras.utils.set_random_seed(0)
        model = create_model(model_name, NUM_CLASSES, size)
        layer_name = get_model_entry(model_name).gradcam_layer
        ours = GradCam(model, layer_name, batch_size=batch)
        class_indices = ours(images).class_indices
        recipe = keras_io_recipe(model, layer_name)
        # Each contender returns None: the call is timed, the maps are dropped.
        contenders = {
            "ours": discard(lambda: upsample(ours(images, class_indices).heatmaps, (size, size))),
            "recipe": discard(lambda: recipe(images, class_indices)),
        }
        if xplique_gradcam is not None:
            explainer = xplique_gradcam(model, conv_layer=layer_name, batch_size=batch)
            targets = tf.one_hot(class_indices, NUM_CLASSES)
            contenders["xplique"] = discard(lambda: explainer.explain(images, targets).numpy())
        seconds = interleaved(contenders, options.gradcam_repeats, warmup=1)
        speed = {name: rate(batch, values) for name, values in seconds.items()}
        rows.append(Row("gradcam", f"{title}: ours batched vs keras-io one image at a time", speed["ours"],
                        "heatmaps/s", "keras-io recipe, eager, one image per tape", speed["recipe"], goal=10.0))
        agreement = correlations(ours(images, class_indices).heatmaps, recipe(images, class_indices))
        rows.append(agreement_row(f"{title}: mean correlation of our maps with the keras-io recipe's", agreement,
                                  batch, "both at the feature map's resolution"))
        if xplique_gradcam is None:
            rows.append(skipped("gradcam", f"{title}: ours batched vs xplique GradCAM", xplique_reason, goal=1.0))
            continue
        import xplique

        ours_maps = ours(images, class_indices).heatmaps  # (n, fh, fw) in [0, 1]
        ours_resized = tf.image.resize(ours_maps[..., None], (size, size), method="bicubic")[..., 0].numpy()
        theirs = explainer.explain(images, tf.one_hot(class_indices, NUM_CLASSES)).numpy()[..., 0]
        agreement = correlations(ours_resized, theirs)
        rows.append(Row("gradcam", f"{title}: ours batched vs xplique GradCAM", speed["ours"], "heatmaps/s",
                        f"xplique {xplique.__version__} GradCAM, batch {batch}", speed["xplique"], goal=1.0))
        rows.append(agreement_row(f"{title}: mean correlation of our maps with xplique's", agreement, batch,
                                  "ours bicubic-resized like xplique's"))
        context.setdefault("gradcam_correlation", {})[model_name] = rows[-1].value
    return rows


def agreement_row(name, agreement, batch, how):
    """The row of a mean Pearson correlation between two methods' maps (goal: above 0.99)."""
    mean = float(agreement.mean()) if len(agreement) else None
    empty = " (the others are empty: nothing survives the ReLU)" if len(agreement) < batch else ""
    return Row("gradcam", name, mean, "Pearson r", "identical maps (r = 1)", 1.0, goal=0.99,
               note=f"over {len(agreement)} of {batch} images{empty}; {how}; goal r > 0.99")
