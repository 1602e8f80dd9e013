"""A Caltech-style synthetic dataset whose class is decided by the object's shape alone.

Each image shows one filled shape (circle, ring, star, ...) on a cluttered background.
Colour, position, scale, rotation, background and clutter are drawn independently of
the class, so a model can only succeed by looking at the object's outline. The layout
copies Caltech-256 (``NNN.name/NNN_XXXX.jpg``, JPEGs of varied sizes), and a
``boxes.json`` beside the class folders holds each object's ground-truth box so that
explanations can be scored::

    {"001.circle/001_0001.jpg": {"box": [x0, y0, x1, y1], "width": 231, "height": 187}, ...}

Box corners are pixel coordinates in the saved image, ``x1``/``y1`` exclusive.

Each object sits anywhere in its image (its centre uniform over the positions that keep
it whole) and is small enough (radius 12-20% of the shorter side) that it often misses
the image centre, so a heatmap that finds the object beats one that points at the
centre (the pointing game's baseline; ``tests/test_synthetic.py`` measures how often the
centre falls in the box).
"""

import json
import math
import pathlib
import shutil

import cv2
import numpy as np

# Each shape is a function of (rng) -> list of polygons in a unit frame centred at 0
# with radius about 1; holes are drawn in the background colour afterwards.
SHAPE_NAMES = ("circle", "ring", "triangle", "square", "star", "cross",
               "crescent", "arrow", "ell", "hourglass")
BOXES_FILE = "boxes.json"
COMPLETE_MARKER = ".complete"
OBJECT_SCALE = (0.12, 0.20)  # the object's radius as a share of the image's shorter side
# Written into the completion marker: a dataset made by an older generator is regenerated.
GENERATOR_VERSION = 4


def _regular_polygon(sides, phase=0.0):
    angles = phase + np.arange(sides) * 2 * math.pi / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _shape_outline(name):
    """Returns (polygons, holes) for a shape in unit coordinates (y down, radius ~1)."""
    circle = _regular_polygon(64)
    if name == "circle":
        return [circle], []
    if name == "ring":
        return [circle], [0.55 * circle]
    if name == "triangle":
        return [_regular_polygon(3, -math.pi / 2)], []
    if name == "square":
        return [_regular_polygon(4, math.pi / 4)], []
    if name == "star":
        outer = _regular_polygon(5, -math.pi / 2)
        inner = 0.4 * _regular_polygon(5, -math.pi / 2 + math.pi / 5)
        points = np.empty((10, 2))
        points[0::2], points[1::2] = outer, inner
        return [points], []
    if name == "cross":
        arm = 0.33
        return [np.array([[-arm, -1], [arm, -1], [arm, -arm], [1, -arm], [1, arm], [arm, arm],
                          [arm, 1], [-arm, 1], [-arm, arm], [-1, arm], [-1, -arm], [-arm, -arm]])], []
    if name == "crescent":
        return [circle], [0.85 * circle + np.array([0.45, -0.1])]
    if name == "arrow":
        return [np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3],
                          [-1, 0.3]])], []
    if name == "ell":
        return [np.array([[-0.7, -1], [-0.2, -1], [-0.2, 0.5], [0.7, 0.5], [0.7, 1], [-0.7, 1]])], []
    if name == "hourglass":
        return [np.array([[-0.8, -1], [0.8, -1], [0.1, 0], [0.8, 1], [-0.8, 1], [-0.1, 0]])], []
    raise ValueError(f"unknown shape {name!r}")


def _random_colour(rng):
    return tuple(int(value) for value in rng.integers(0, 256, size=3))


def _cluttered_background(rng, height, width):
    """A random two-colour gradient with random lines and blobs: clutter, no class signal."""
    start, end = np.array(_random_colour(rng)), np.array(_random_colour(rng))
    ramp = np.linspace(0.0, 1.0, width if rng.random() < 0.5 else height)
    ramp = ramp[None, :, None] if len(ramp) == width else ramp[:, None, None]
    image = (start + (end - start) * ramp) * np.ones((height, width, 1))
    image = np.clip(image + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 7)):
        start_point = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        end_point = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, start_point, end_point, _random_colour(rng), int(rng.integers(1, 3)))
    for _ in range(rng.integers(2, 6)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(2, max(3, width // 12))), int(rng.integers(2, max(3, height // 12))))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, _random_colour(rng), -1)
    return image


def render_image(shape_name, rng, height, width):
    """Draws one ``shape_name`` object on clutter, anywhere in the image.

    Returns:
        (image, box): uint8 RGB array (height, width, 3) and the object's box
        [x0, y0, x1, y1] in pixels (exclusive upper corner).
    """
    image = _cluttered_background(rng, height, width)
    radius = rng.uniform(*OBJECT_SCALE) * min(height, width)
    # Upright-ish like photographed objects: a full turn would make a square a diamond.
    angle = rng.uniform(-math.pi / 6, math.pi / 6)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    margin = radius * 1.05
    # (x, y) in pixels, uniform over the positions that keep the whole object inside the image.
    centre = rng.uniform([margin, margin], [width - margin, height - margin])
    polygons, holes = _shape_outline(shape_name)

    def to_pixels(points):
        return np.round(points @ rotation.T * radius + centre).astype(np.int32)

    colour = _random_colour(rng)
    # Keep the object visible: push its colour away from the background under it.
    y, x = int(centre[1]), int(centre[0])
    if np.abs(np.array(colour) - image[y, x].astype(int)).sum() < 120:
        colour = tuple(255 - value for value in colour)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [to_pixels(p) for p in polygons], 255, lineType=cv2.LINE_AA)
    if holes:
        cv2.fillPoly(mask, [to_pixels(h) for h in holes], 0, lineType=cv2.LINE_AA)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    image = (image * (1 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)
    rows, cols = np.nonzero(mask > 63)  # a pixel at least a quarter covered is the object's
    box = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    return image, box


def class_folder_names(num_classes=len(SHAPE_NAMES)):
    """Returns the Caltech-style folder names ``001.circle`` ... for the first classes."""
    if not 2 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be 2-{len(SHAPE_NAMES)}. Received: {num_classes}")
    return [f"{index:03d}.{name}" for index, name in enumerate(SHAPE_NAMES[:num_classes], start=1)]


def generate_dataset(root, *, images_per_class=200, num_classes=len(SHAPE_NAMES), seed=0,
                     min_size=120, max_size=300):
    """Writes the synthetic dataset under ``root`` (deterministic for a seed) and returns root.

    Args:
        root: output folder; class folders and ``boxes.json`` are written inside.
        images_per_class: JPEGs per class.
        num_classes: how many of the shapes in SHAPE_NAMES to use (2-10).
        seed: the whole dataset is a function of the seed and the sizes.
        min_size, max_size: range of each image's width and height in pixels.

    Returns:
        ``root`` as a pathlib.Path.
    """
    root = pathlib.Path(root)
    boxes = {}
    for class_index, folder in enumerate(class_folder_names(num_classes)):
        shape_name = folder.split(".", 1)[1]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for image_index in range(1, images_per_class + 1):
            # One generator per image: any image can be regenerated alone, and the set
            # does not change with the iteration order.
            rng = np.random.default_rng([seed, class_index, image_index])
            # Caltech-like aspect ratios (3:4 to 4:3), so resizing to a square distorts little.
            width = int(rng.integers(min_size, max_size + 1))
            height = int(np.clip(width * rng.uniform(0.75, 4 / 3), min_size, max_size))
            image, box = render_image(shape_name, rng, height, width)
            relative = f"{folder}/{folder[:3]}_{image_index:04d}.jpg"
            cv2.imwrite(str(root / relative), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            boxes[relative] = {"box": box, "width": width, "height": height}
    (root / BOXES_FILE).write_text(json.dumps(boxes, indent=0))
    return root


def ensure_dataset(root, *, images_per_class=200, seed=0):
    """Generates the default synthetic dataset under ``root`` unless it is already complete.

    A marker file written last records the parameters and the generator's version, so an
    interrupted generation, a changed size or an older generator's dataset is regenerated
    rather than trusted.
    """
    root = pathlib.Path(root)
    marker = root / COMPLETE_MARKER
    expected = json.dumps({"images_per_class": images_per_class, "seed": seed,
                           "generator": GENERATOR_VERSION})
    if marker.is_file() and marker.read_text() == expected:
        return root
    for folder in class_folder_names():  # another size, seed or generator: start clean, no stale images
        shutil.rmtree(root / folder, ignore_errors=True)
    generate_dataset(root, images_per_class=images_per_class, seed=seed)
    marker.write_text(expected)
    return root


def load_boxes(root):
    """Returns the ground-truth boxes of a synthetic dataset, keyed by relative path, or {}."""
    path = pathlib.Path(root) / BOXES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
