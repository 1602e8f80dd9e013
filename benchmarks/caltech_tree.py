"""A generated stand-in for the Caltech-256 download: its shape, its image sizes, its oddities.

No run of this project had met a tree of Caltech-256's size, and the real one cannot be
downloaded here. This one has what matters for speed and memory:

- 257 class folders ``NNN.name``, 80 to 827 images each, 30,607 in all: 256 object
  classes with a long tail (most near 80-110 images, about twenty above 200, the largest
  about 750) and ``257.clutter`` with 827, as in the real download;
- JPEGs named ``NNN_XXXX.jpg``, most with sides of 200-500 px, 2% large ones with a long
  side of 1000-2000 px, 3% grayscale; their content is smooth colour fields, shapes and
  grain, so that they compress to tens of kilobytes like photographs, not to a few
  hundred bytes (flat colour) or to megabytes (pure noise);
- the real download's oddities: a stray text file ``198.spider/RENAME2``, an empty
  nested folder ``056.dog/greg``, and here also two truncated JPEGs (the last image of
  the first class and of the clutter class; they count in the 30,607).

``ensure_tree`` generates it once under a cache folder and reuses it; a marker file
holds the generator's parameters and version, so a changed generator regenerates. A
smaller tree (``classes``, ``scale``) keeps the oddities' classes when it has room.
"""

import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # keras_caltech, run from anywhere

from keras_caltech.progress import ProgressLine  # noqa: E402

GENERATOR_VERSION = 1  # raise it whenever the generated tree would change
MARKER = ".caltech_tree.json"
TOTAL_IMAGES = 30_607
NUM_CLASSES = 257
MIN_IMAGES, CLUTTER_IMAGES = 80, 827
TAIL_EXPONENT = 0.55  # class k of 256 gets a share of 1 / k**0.55: the largest about 750 images
LARGE_SHARE, GRAYSCALE_SHARE = 0.02, 0.03
ODD_CLASSES = {56: "dog", 198: "spider", 257: "clutter"}
# Real class names, for figures whose labels look like the real ones; the rest are made up.
NOUNS = ("ak47", "backpack", "baseball-bat", "bathtub", "bear", "beer-mug", "binoculars", "birdbath",
         "blimp", "bonsai", "boom-box", "bowling-ball", "brain", "breadmaker", "buddha", "bulldozer",
         "butterfly", "cactus", "cake", "calculator", "camel", "cannon", "canoe", "car-tire", "cartman",
         "cd", "centipede", "cereal-box", "chandelier", "chess-board", "chimp", "chopsticks", "cockroach",
         "coffee-mug", "coffin", "coin", "comet", "computer-keyboard", "conch", "cormorant", "covered-wagon",
         "cowboy-hat", "crab", "desk-globe", "diamond-ring", "dice", "dolphin", "doorknob", "drinking-straw",
         "duck", "dumb-bell", "eiffel-tower", "electric-guitar", "elephant", "elk", "ewer", "eyeglasses",
         "fern", "fighter-jet", "fire-extinguisher", "fire-hydrant", "fire-truck", "fireworks", "flashlight")


def class_counts(num_object_classes=NUM_CLASSES - 1, total=TOTAL_IMAGES - CLUTTER_IMAGES, minimum=MIN_IMAGES):
    """Images per object class: a deterministic long tail from ``minimum`` up, summing to ``total``.

    Returns:
        int array (num_object_classes,), in class order: the sizes are spread over the
        classes by a fixed permutation, not sorted.
    """
    weights = 1.0 / np.arange(1, num_object_classes + 1) ** TAIL_EXPONENT
    weights -= weights[-1]  # the smallest class gets exactly ``minimum``
    extra = (total - num_object_classes * minimum) * weights / weights.sum()
    counts = minimum + np.floor(extra).astype(int)
    counts[np.argsort(-(extra % 1))[:total - counts.sum()]] += 1  # the rounding remainder, one image each
    return counts[np.random.default_rng(256).permutation(num_object_classes)]


def class_name(number):
    """The folder name of class ``number`` (1-257), e.g. ``056.dog``."""
    if number in ODD_CLASSES:
        return f"{number:03d}.{ODD_CLASSES[number]}"
    noun = NOUNS[(number - 1) % len(NOUNS)]
    return f"{number:03d}.{noun}" if number <= len(NOUNS) else f"{number:03d}.{noun}-{number // len(NOUNS) + 1}"


def tree_plan(classes=NUM_CLASSES, scale=1.0):
    """The classes of a tree and their image counts: [(folder name, images), ...].

    Args:
        classes: how many of the 257 classes; fewer keep the dog, spider and clutter
            classes (which hold the oddities) and spread the rest evenly.
        scale: multiplies every class's count (at least 3 images a class remain, enough
            for a train / validation / test split).
    """
    if not 2 <= classes <= NUM_CLASSES:
        raise ValueError(f"classes must be between 2 and {NUM_CLASSES}. Received: {classes}")
    counts = list(class_counts()) + [CLUTTER_IMAGES]
    kept = sorted(ODD_CLASSES)[max(0, len(ODD_CLASSES) - classes):]
    others = [number for number in range(1, NUM_CLASSES + 1) if number not in kept]
    picks = np.linspace(0, len(others) - 1, classes - len(kept)).round().astype(int)
    numbers = sorted(kept + [others[index] for index in picks])
    return [(class_name(number), max(3, round(counts[number - 1] * scale))) for number in numbers]


def image_spec(rng):
    """(width, height, grayscale) of one image: mostly 200-500 px a side, a few large ones."""
    if rng.random() < LARGE_SHARE:
        long_side = int(rng.integers(1000, 2001))
        short_side = int(long_side * rng.uniform(0.6, 0.9))
        width, height = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
    else:
        width, height = (int(side) for side in rng.integers(200, 501, 2))
    return width, height, bool(rng.random() < GRAYSCALE_SHARE)


def make_jpeg(rng, width, height, grayscale):
    """JPEG bytes of a photo-like picture: a smooth colour field, a few shapes, grain."""
    coarse = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.float32)
    picture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)  # (h, w, 3)
    for _ in range(int(rng.integers(2, 6))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(min(width, height) // 10, min(width, height) // 3 + 1))
        colour = tuple(float(value) for value in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            cv2.circle(picture, centre, radius, colour, -1)
        else:
            cv2.rectangle(picture, centre, (centre[0] + radius, centre[1] + radius // 2), colour, -1)
    grain = rng.normal(0, 12, (height // 2 + 1, width // 2 + 1, 1)).astype(np.float32)
    picture += cv2.resize(grain, (width, height), interpolation=cv2.INTER_LINEAR)[..., None]
    picture = np.clip(picture, 0, 255).astype(np.uint8)
    if grayscale:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)
    ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed on a {width}x{height} picture")
    return encoded.tobytes()


def _write_class(job):
    """Writes one class folder's JPEGs; returns how many (runs in a worker process)."""
    folder, number, count, seed = job
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        rng = np.random.default_rng([seed, number, index])
        (folder / f"{number:03d}_{index:04d}.jpg").write_bytes(make_jpeg(rng, *image_spec(rng)))
    return count


def _add_oddities(root, plan):
    """The real download's stray file and empty folder, and two truncated JPEGs."""
    names = [name for name, _ in plan]
    by_number = {int(name[:3]): name for name in names}
    (root / by_number.get(198, names[0]) / "RENAME2").write_bytes(b"stray file of the Caltech-256 download\n")
    (root / by_number.get(56, names[0]) / "greg").mkdir(exist_ok=True)
    for name in {names[0], names[-1]}:
        last = sorted((root / name).glob("*.jpg"))[-1]
        encoded = last.read_bytes()
        last.write_bytes(encoded[: len(encoded) * 3 // 5])  # cut inside the entropy-coded data


def _map(function, jobs, workers):
    """``function`` over ``jobs``, results as they finish: in worker processes, or here for one worker.

    JPEG encoding holds the GIL often enough that threads gain little, so processes do
    the work. They are forked, which is cheap and imports nothing again, but only while
    TensorFlow is not loaded: forking a process that runs TensorFlow's thread pools can
    deadlock the child, so then they are spawned.
    """
    if workers == 1:
        yield from map(function, jobs)
        return
    method = "spawn" if "tensorflow" in sys.modules else "fork"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap_unordered(function, jobs)


def _parameters(classes, scale, seed):
    return {"generator_version": GENERATOR_VERSION, "classes": classes, "scale": scale, "seed": seed}


def ensure_tree(cache_dir, classes=NUM_CLASSES, scale=1.0, seed=0, workers=0, log=print, progress=True):
    """The generated tree under ``cache_dir``, made on first use (or when the generator changed).

    Args:
        cache_dir: a folder outside the repository; each (classes, scale) gets a subfolder.
        classes, scale: see :func:`tree_plan`.
        seed: the images' seed.
        workers: processes encoding JPEGs; 0 means one per CPU core.
        log: where the one-line summary goes.
        progress: draw a progress line on stderr while generating.

    Returns:
        The tree's folder (pathlib.Path), one subfolder per class.
    """
    root = pathlib.Path(cache_dir).expanduser() / f"caltech256-like-{classes}-classes-scale-{scale:g}"
    parameters = _parameters(classes, scale, seed)
    try:
        if json.loads((root / MARKER).read_text()) == parameters:
            return root
    except (OSError, ValueError):
        pass
    plan = tree_plan(classes, scale)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted generation starts over
    jobs = [(str(partial / name), int(name[:3]), count, seed) for name, count in plan]
    jobs.sort(key=lambda job: -job[2])  # largest classes first: the workers end together
    total = sum(count for _, count in plan)
    started = time.perf_counter()
    with ProgressLine(f"generating {root.name}", total, enabled=progress) as line:
        for written in _map(_write_class, jobs, workers or os.cpu_count() or 1):
            line.advance(written)
    _add_oddities(partial, plan)
    (partial / MARKER).write_text(json.dumps(parameters))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    log(f"generated {total:,} JPEGs in {len(plan)} classes in {time.perf_counter() - started:.0f} s: {root}")
    return root
