"""Evaluation throughput per TTA mode: images per second for none, flip and 10crop.

Runs the evaluation's own pipeline (tf.data decode, resize and view cutting, prefetch)
and its compiled forward pass on a freshly generated synthetic split with an untrained
model (speed does not depend on the weights). 10-crop should cost close to 10x the plain
pass: its forward passes hold ten times the views, nothing else should add up.

    python benchmarks/evaluate_tta.py                                  # tiny: 32 px, 64 images
    python benchmarks/evaluate_tta.py --image-size 224 --images 256    # the Caltech setting

Prints one row per mode: views per image, images/s, views/s, and the cost per image
relative to the plain pass.
"""

import argparse
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_caltech.config import TTA_MODES, check_choice  # noqa: E402
from keras_caltech.data.pipeline import split_files  # noqa: E402
from keras_caltech.data.synthetic import class_folder_names, generate_dataset  # noqa: E402
from keras_caltech.evaluation.tta import (TTA_VIEWS, images_per_batch, tta_dataset,  # noqa: E402
                                          tta_forward, tta_load_size)
from keras_caltech.models import create_model  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Images/s of the evaluation for each TTA mode.")
    parser.add_argument("--image-size", type=int, default=32, help="model input side (default 32)")
    parser.add_argument("--images", type=int, default=64, help="test images (default 64)")
    parser.add_argument("--classes", type=int, default=4, help="classes, 2-10 (default 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="views per forward pass (default 32)")
    parser.add_argument("--model", default="mycnn", help="registered model name (default mycnn)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per mode; the best counts (default 3)")
    parser.add_argument("--modes", default=",".join(TTA_MODES), help="comma-separated TTA modes")
    return parser.parse_args(argv)


def one_pass(dataset, forward):
    """Seconds for one full evaluation pass: the pipeline and the forward passes."""
    started = time.perf_counter()
    for views, _ in dataset:
        forward(views).numpy()
    return time.perf_counter() - started


def time_modes(model, files, image_size, modes, batch_size, repeats):
    """Best seconds per mode over ``repeats`` passes, the modes interleaved.

    Interleaving makes a burst of load from other processes on a shared machine hit
    every mode alike, instead of spoiling one mode's numbers.
    """
    pipelines = {}
    for mode in modes:
        dataset = tta_dataset(*files, image_size, mode, images_per_batch(batch_size, mode))
        pipelines[mode] = (dataset, tta_forward(model, mode, image_size))
        one_pass(*pipelines[mode])  # untimed: traces the function and warms the file cache
    best = {mode: float("inf") for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            best[mode] = min(best[mode], one_pass(*pipelines[mode]))
    return best


def main(argv=None):
    args = parse_args(argv)
    modes = [check_choice("eval.tta", mode.strip()) for mode in args.modes.split(",") if mode.strip()]
    class_names = class_folder_names(args.classes)
    per_class = -(-args.images // args.classes)  # ceiling
    with tempfile.TemporaryDirectory(prefix="benchmark_tta_") as temporary:
        # Source images about as much larger than the model input as Caltech's are than 224 px.
        root = generate_dataset(pathlib.Path(temporary) / "data", images_per_class=per_class,
                                num_classes=args.classes, seed=0, min_size=args.image_size,
                                max_size=2 * args.image_size)
        pairs = [(f"{name}/{path.name}", label) for label, name in enumerate(class_names)
                 for path in sorted((root / name).glob("*.jpg"))]
        model = create_model(args.model, len(class_names), args.image_size)
        seconds = time_modes(model, split_files(root, pairs), args.image_size, modes, args.batch_size, args.repeats)
    print(f"{args.model} at {args.image_size} px, {len(pairs)} images, {args.batch_size} views per forward pass, "
          f"best of {args.repeats}; {os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}")
    print(f"{'mode':<8}{'views':>6}{'resize':>8}{'images/s':>11}{'views/s':>10}{'cost/image':>12}")
    plain = seconds.get("none")
    for mode in modes:
        images_per_second = len(pairs) / seconds[mode]
        cost = f"{seconds[mode] / plain:.1f}x" if plain else "-"
        print(f"{mode:<8}{TTA_VIEWS[mode]:>6}{tta_load_size(mode, args.image_size):>8}{images_per_second:>11.1f}"
              f"{images_per_second * TTA_VIEWS[mode]:>10.1f}{cost:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
