"""Serving speed: the exported SavedModel's signatures against the Keras model on decoded arrays.

    python benchmarks/serving.py                            # tiny: untrained MyCNN, 32 px, 10 classes
    python benchmarks/serving.py --image-size 224 --source-size 300 --repeats 50
    python benchmarks/serving.py --run runs/NAME            # a trained run's best.keras
    python benchmarks/serving.py --run runs/NAME --saved-model saved_models/NAME/1   # its existing export

Prints latency (p50, p95) of one call at batch 1 and throughput at batch N (default 32) for

    serving_default   JPEG bytes in: decode + resize + model + top-k, all in the graph
    predict_images    float pixels at the source size in: resize + model + top-k
    keras model       arrays already decoded and resized, the model alone (graph-compiled)

so the cost of decoding and resizing inside the signature is the difference between the
first row and the last. Unless ``--saved-model`` names an existing export, the model is
exported to a temporary folder by the same code as ``python -m keras_caltech export``. A benchmark, not a test: timings depend on
the machine and its load, and nothing asserts on them.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_caltech.data.pipeline import decode_and_resize  # noqa: E402
from keras_caltech.export.saved_model import export_model  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run folder: benchmark its best.keras (default: an untrained MyCNN)")
    parser.add_argument("--saved-model", help="with --run: an existing export of that run to time "
                                              "(default: export the model afresh to a temporary folder)")
    parser.add_argument("--image-size", type=int, default=32, help="model input side without --run (default 32)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes without --run (default 10)")
    parser.add_argument("--source-size", type=int, default=64,
                        help="height of the JPEGs sent (width is 4/3 of it; default 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch for the throughput column (default 32)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (default 30)")
    return parser.parse_args(argv)


def load_or_build_model(args):
    """(model, class names, resize_crop): the run's best model, or a fresh MyCNN with random weights.

    ``resize_crop`` is the run's ``augment.resize_crop`` (0 for the fresh model): served
    images are cut as that run's evaluation cuts them.
    """
    if args.run:
        from keras_caltech.models.loading import load_model_safely
        from keras_caltech.runs import open_run
        run = open_run(args.run)
        return load_model_safely(run.model_path), run.class_names, run.config.augment.resize_crop
    from keras_caltech.models import create_model
    model = create_model("mycnn", args.num_classes, args.image_size)
    return model, [f"{index:03d}.class{index}" for index in range(1, args.num_classes + 1)], 0


def make_jpegs(count, height, seed=0):
    """``count`` JPEG-encoded photos-like images (smooth colour fields plus noise), height x 4/3 height."""
    rng = np.random.default_rng(seed)
    width = height * 4 // 3
    encoded = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (1, 4, 4, 3)).astype("float32")
        smooth = tf.image.resize(coarse, (height, width), method="bicubic")[0].numpy()
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype("uint8")
        encoded.append(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return encoded


def time_rounds(calls, repeats):
    """Seconds per call of each ``function(argument)`` in ``calls``, after two warm-up calls.

    The calls take turns, one round at a time, so that load from other processes on a
    shared machine slows every row alike instead of whichever happened to run then.

    Returns:
        float array (len(calls), repeats).
    """
    def run(function, argument):
        for value in tf.nest.flatten(function(argument)):  # make sure the work is done, not queued
            value.numpy()

    for function, argument in calls * 2:
        run(function, argument)
    seconds = np.zeros((len(calls), repeats))
    for repeat in range(repeats):
        for index, (function, argument) in enumerate(calls):
            started = time.perf_counter()
            run(function, argument)
            seconds[index, repeat] = time.perf_counter() - started
    return seconds


def main(argv=None):
    args = parse_args(argv)
    if args.saved_model and not args.run:
        print("error: --saved-model needs --run, the run it was exported from (its Keras model is the baseline)",
              file=sys.stderr)
        return 2
    model, class_names, resize_crop = load_or_build_model(args)
    image_size = model.input_shape[1]
    jpegs = make_jpegs(args.batch_size, args.source_size)
    pixels = [tf.cast(tf.io.decode_jpeg(encoded, channels=3), tf.float32) for encoded in jpegs]
    decoded = tf.stack([decode_and_resize(encoded, image_size, resize_crop) for encoded in jpegs])  # (n, size, size, 3)

    @tf.function
    def keras_model(images):
        return model(images, training=False)

    with tempfile.TemporaryDirectory() as folder:
        saved_model = args.saved_model or export_model(model, class_names, folder, "benchmark", resize_crop=resize_crop)
        signatures = tf.saved_model.load(str(saved_model)).signatures
        serving_default, predict_images = signatures["serving_default"], signatures["predict_images"]
        rows = [
            ("serving_default", f"JPEG bytes {args.source_size}x{args.source_size * 4 // 3}",
             lambda batch: serving_default(image_bytes=batch), tf.constant(jpegs[:1]), tf.constant(jpegs)),
            ("predict_images", f"float pixels {args.source_size}x{args.source_size * 4 // 3}",
             lambda batch: predict_images(images=batch), tf.stack(pixels[:1]), tf.stack(pixels)),
            ("keras model", f"float arrays {image_size}x{image_size}, pre-decoded",
             keras_model, decoded[:1], decoded),
        ]
        print(f"model {model.name} at {image_size} px, {len(class_names)} classes; "
              f"{args.repeats} timed calls each; TensorFlow {tf.__version__} on {os.cpu_count()} CPU core(s)")
        header = (f"{'path':<16} {'input':<40} {'batch 1 p50 ms':>14} {'batch 1 p95 ms':>14} "
                  f"{f'batch {args.batch_size} img/s':>16}")
        print(header)
        print("-" * len(header))
        latency = time_rounds([(function, single) for _, _, function, single, _ in rows], args.repeats) * 1000
        batch_seconds = time_rounds([(function, batch) for _, _, function, _, batch in rows], args.repeats)
        throughput = {}
        for index, (name, description, *_) in enumerate(rows):
            throughput[name] = args.batch_size / np.median(batch_seconds[index])
            print(f"{name:<16} {description:<40} {np.percentile(latency[index], 50):14.2f} "
                  f"{np.percentile(latency[index], 95):14.2f} {throughput[name]:16.1f}")
    extra = 1000 * (1 / throughput["serving_default"] - 1 / throughput["keras model"])
    print(f"decode + resize + top-k inside serving_default at batch {args.batch_size}: "
          f"{extra:+.3f} ms per image over the bare model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
