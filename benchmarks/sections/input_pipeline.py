"""Section 3: input pipeline throughput against the rate the training step consumes images.

A folder of Caltech-sized JPEGs (generated once per run by the synthetic dataset, sides
drawn between ``--jpeg-min`` and ``--jpeg-max`` pixels) goes through the
trainer's own ``EpochBatches`` with the training augmenter (horizontal flip and a
random crop from an image resized 8/7 larger, the usual Caltech/ImageNet recipe):
decode, resize, shuffle, batch, augment, prefetch, one full epoch per repetition. The
decoded-image cache (``data.cache=memory``) is timed after the epoch that fills it.

The pipeline is timed alone, on all cores. In training it shares those cores with the
step, which is why the goal is a 3x margin over the step's consumption rate.
"""

import pathlib
import tempfile
import time

import numpy as np

from keras_caltech.config import AugmentConfig
from keras_caltech.data.augment import build_augmenter, load_size
from keras_caltech.data.pipeline import EpochBatches, split_files
from keras_caltech.data.synthetic import class_folder_names, generate_dataset
from timing import Row, interleaved, rate
from sections.train_step import MODEL_TITLES

PIPELINE_GOAL = 3.0


def make_jpeg_folder(root, images_per_class, num_classes, min_size, max_size):
    """Generates the JPEGs; returns ((paths, labels) of all of them, class_names, count, mean w, mean h)."""
    root = pathlib.Path(root)
    generate_dataset(root / "jpegs", images_per_class=images_per_class, num_classes=num_classes, seed=0,
                     min_size=min_size, max_size=max_size)
    class_names = class_folder_names(num_classes)
    pairs = [(path.relative_to(root / "jpegs").as_posix(), label)
             for label, name in enumerate(class_names) for path in sorted((root / "jpegs" / name).glob("*.jpg"))]
    files = split_files(root / "jpegs", pairs)
    import cv2

    sizes = np.array([cv2.imread(str(root / "jpegs" / relative)).shape[:2] for relative, _ in pairs])
    return files, class_names, len(pairs), float(sizes[:, 1].mean()), float(sizes[:, 0].mean())


def epoch_runner(dataset):
    """A callable that iterates one epoch of ``dataset`` and returns its seconds."""
    def run():
        started = time.perf_counter()
        for images, _ in dataset:
            pass
        images.numpy()
        return time.perf_counter() - started

    return run


def run(options, context):
    """Rows for section 3 (compares with section 1's ``context["train_rate"]`` when present)."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files, class_names, count, width, height = make_jpeg_folder(
            folder, options.jpeg_images // 10, 10, options.jpeg_min, options.jpeg_max)
        for image_size in options.train_sizes:
            augment = AugmentConfig(horizontal_flip=True, resize_crop=image_size * 8 // 7)
            contenders = {}
            for cache in ("none", "memory"):
                # The training split's batches exactly as the trainer builds them (epoch 0).
                batches = EpochBatches(*files, class_names, image_size, options.batch_size,
                                       augmenter=build_augmenter(augment, image_size), cache=cache,
                                       load_size=load_size(augment, image_size))
                contenders[cache] = epoch_runner(batches(0))
            seconds = interleaved(contenders, options.pipeline_repeats, warmup=1)
            consumers = {model: images_per_second for (model, size), images_per_second
                         in context.get("train_rate", {}).items() if size == image_size}
            fastest = max(consumers, key=consumers.get) if consumers else None
            reference = (f"our {MODEL_TITLES.get(fastest, fastest)} {image_size} px training step (fastest consumer)"
                         if fastest else "")
            for cache, label in (("none", "decode + resize + flip + crop"),
                                 ("memory", "decoded-image cache on, + flip + crop")):
                rows.append(Row(
                    "pipeline", f"training batches {image_size} px, {label}", rate(count, seconds[cache]), "img/s",
                    reference, consumers.get(fastest), goal=PIPELINE_GOAL if fastest else None,
                    note=(f"{count} JPEGs, mean {width:.0f}x{height:.0f} px, load {image_size * 8 // 7} px; "
                          "pipeline alone on all cores")))
    return rows
