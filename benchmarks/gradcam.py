"""Grad-CAM heatmaps per second: ours against the one-image-at-a-time keras-io recipe.

Ours (``keras_caltech.explain.GradCam``) runs a whole batch through one gradient tape
inside a compiled ``tf.function`` traced once. The keras-io recipe, as the keras.io
Grad-CAM example teaches it, explains one image at a time with a plain eager
``tf.GradientTape`` over a model that returns (layer activations, predictions);
here it is re-implemented in :func:`keras_io_heatmap`, with its two-output model built
once outside the timing (the example rebuilds it on every call, which would only make
it slower). Both explain the predicted class at the model's declared Grad-CAM layer, so
their maps must agree: the table gives their mean Pearson correlation (should be ~1).

    python benchmarks/gradcam.py                                  # 224 px, batch 32
    python benchmarks/gradcam.py --size 64 --models mycnn --repeats 5

The models are untrained (``weights=None``): speed does not depend on the weights. Each
timing is the best of ``--repeats`` passes over the batch, after one untimed warm-up.
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_caltech.explain import GradCam  # noqa: E402
from keras_caltech.models import create_model, get_model_entry  # noqa: E402

NUM_CLASSES = 10


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Grad-CAM heatmaps/s: batched and compiled vs "
                                                 "the keras-io one-image eager recipe.")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--batch", type=int, default=32, help="images explained per pass (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts (default 3)")
    parser.add_argument("--models", nargs="+", default=["mycnn", "resnet50"],
                        help="registered model names (default: mycnn resnet50)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def keras_io_heatmap(activations_and_logits, image):
    """Grad-CAM of one image, the keras-io way: an eager tape, one image per call.

    Args:
        activations_and_logits: a model from images to [layer activations, logits].
        image: (h, w, 3) float32 RGB 0-255.

    Returns:
        (h', w') float32 heatmap in [0, 1] for the predicted class (zeros if empty).
    """
    with tf.GradientTape() as tape:
        activations, logits = activations_and_logits(image[None])  # (1, h', w', c), (1, classes)
        predicted = int(tf.argmax(logits[0]))
        score = logits[:, predicted]
    gradients = tape.gradient(score, activations)  # (1, h', w', c)
    weights = tf.reduce_mean(gradients, axis=(0, 1, 2))  # (c,): mean gradient per channel
    heatmap = tf.squeeze(activations[0] @ weights[..., None], -1)  # (h', w')
    heatmap = tf.maximum(heatmap, 0.0).numpy()
    peak = heatmap.max()
    return heatmap / peak if peak > 0 else heatmap


def best_seconds(function, repeats):
    """Runs ``function`` once untimed, then ``repeats`` times; the fastest wall time."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def mean_correlation(first, second):
    """Mean Pearson correlation of paired maps; pairs with a constant map are skipped.

    Returns:
        (mean correlation or nan, number of pairs compared).
    """
    values = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(first, second)
              if np.ptp(a) > 0 and np.ptp(b) > 0]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def benchmark(name, size, batch, repeats, seed):
    """One table row: heatmaps/s of both implementations and their agreement."""
    keras.utils.set_random_seed(seed)
    model = create_model(name, NUM_CLASSES, size)
    layer_name = get_model_entry(name).gradcam_layer
    images = np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)

    ours = GradCam(model, layer_name, batch_size=batch)
    ours_seconds = best_seconds(lambda: ours(images), repeats)
    ours_maps = ours(images).heatmaps

    recipe_model = keras.Model(model.input, [model.get_layer(layer_name).output, model.output])
    recipe_seconds = best_seconds(lambda: [keras_io_heatmap(recipe_model, image) for image in images],
                                  repeats)
    recipe_maps = np.stack([keras_io_heatmap(recipe_model, image) for image in images])
    correlation, compared = mean_correlation(ours_maps, recipe_maps)
    return {"model": name, "layer": f"{layer_name} {ours_maps.shape[1]}x{ours_maps.shape[2]}",
            "ours": batch / ours_seconds, "recipe": batch / recipe_seconds,
            "correlation": correlation, "compared": compared}


def main(argv=None):
    args = parse_args(argv)
    print(f"Grad-CAM, batch {args.batch} at {args.size} px, best of {args.repeats}; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {platform.processor() or 'CPU'}, "
          f"{os.cpu_count()} cores")
    header = (f"{'model':<10} {'layer':<24} {'ours maps/s':>12} {'keras-io maps/s':>16} "
              f"{'speed-up':>9} {'mean corr':>10}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        row = benchmark(name, args.size, args.batch, args.repeats, args.seed)
        print(f"{row['model']:<10} {row['layer']:<24} {row['ours']:>12.1f} {row['recipe']:>16.1f} "
              f"{row['ours'] / row['recipe']:>8.1f}x {row['correlation']:>10.4f}"
              + (f"  ({row['compared']} of {args.batch} maps non-constant)"
                 if row["compared"] < args.batch else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
