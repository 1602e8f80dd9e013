"""Generated folder-per-class datasets of different character, for choosing a default recipe.

Each function writes one tree (``CLASS/NNNN.jpg``) under a folder and returns nothing;
every tree is a function of its seed. None of them is the built-in synthetic dataset
except ``shapes_anywhere``, which uses its generator with another seed and fewer images.
The real images come from scikit-learn, which ships them (``pip install scikit-learn``).

- ``textures``: 10 procedural textures (gratings, checks, dots, stripes, noise of several
  grains) in random colours, 40 images each, plus a ``257.clutter`` class mixing them.
- ``shapes_anywhere``: the built-in shape classes at another seed, 150 per class.
- ``glyphs``: the digits 0-9 drawn in random fonts, colours, contrast, sizes, positions
  and slants on noisy backgrounds, 120 per class.
- ``tiny_classes``: 20 letters, 12 images each.
- ``imbalanced``: 10 glyph classes with 200 down to 12 images.
- ``many_classes``: 104 classes (26 letters x 4 ink colours: colour matters), 15 each.
- ``mixed_sizes``: 8 shape classes in images from 24 to 480 px a side, odd aspect ratios,
  a grayscale PNG now and then, and a corrupt file the scan must skip.
- ``sklearn_digits``: scikit-learn's 1,797 real handwritten digits (8x8 grayscale).
- ``sklearn_photos``: 64-160 px crops of scikit-learn's two sample photographs, four
  regions of each as eight classes.
"""

import math

import cv2
import numpy as np

from keras_caltech.data import synthetic

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
         cv2.FONT_ITALIC | cv2.FONT_HERSHEY_SIMPLEX)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _write(path, image_rgb, quality=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR) if image_rgb.ndim == 3 else image_rgb)
    else:
        cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


def _colour(rng, low=0, high=256):
    return np.array(rng.integers(low, high, size=3), np.float32)


def _texture(kind, rng, size):
    """One texture image (size, size, 3) uint8 of ``kind``, colours at random."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, math.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    if kind == "fine_grating":
        pattern = np.sin(2 * math.pi * rng.uniform(10, 14) * u) > 0
    elif kind == "coarse_grating":
        pattern = np.sin(2 * math.pi * rng.uniform(2.5, 4) * u) > 0
    elif kind == "checks":
        frequency = rng.uniform(3, 6)
        v = -x * math.sin(angle) + y * math.cos(angle)
        pattern = (np.floor(frequency * u) + np.floor(frequency * v)) % 2 == 0
    elif kind == "dots":
        pattern = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(15, 30))):
            cy, cx, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.02, 0.05)
            pattern |= (x - cx) ** 2 + (y - cy) ** 2 < radius ** 2
    elif kind == "rings":
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        pattern = np.sin(2 * math.pi * rng.uniform(5, 8) * np.hypot(x - cx, y - cy)) > 0
    elif kind == "fine_noise":
        pattern = rng.random((size, size)) > 0.5
    elif kind == "blotches":
        noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), size / 10)
        pattern = noise > np.median(noise)
    elif kind == "zigzag":
        pattern = np.sin(2 * math.pi * 6 * (u + 0.08 * np.abs(((x * 8) % 2) - 1))) > 0
    elif kind == "crosshatch":
        v = -x * math.sin(angle) + y * math.cos(angle)
        pattern = (np.sin(2 * math.pi * 7 * u) > 0.6) | (np.sin(2 * math.pi * 7 * v) > 0.6)
    elif kind == "streaks":
        noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), sigmaX=0.5, sigmaY=size / 6)
        pattern = noise > np.median(noise)
    else:
        raise ValueError(kind)
    ink, paper = _colour(rng), _colour(rng)
    image = np.where(pattern[..., None], ink, paper) + rng.normal(0, 10, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


TEXTURES = ("fine_grating", "coarse_grating", "checks", "dots", "rings", "fine_noise", "blotches",
            "zigzag", "crosshatch", "streaks")


def textures(root, seed=0, per_class=40, size=72):
    for index, kind in enumerate(TEXTURES):
        for number in range(per_class):
            rng = np.random.default_rng([seed, index, number])
            _write(root / f"{index + 1:03d}.{kind}" / f"{number:04d}.jpg", _texture(kind, rng, size))
    for number in range(per_class):  # clutter: a random pair of textures, split diagonally
        rng = np.random.default_rng([seed, 99, number])
        first, second = (_texture(TEXTURES[k], rng, size) for k in rng.choice(len(TEXTURES), 2, replace=False))
        mask = np.tri(size, dtype=bool)[..., None]
        _write(root / "257.clutter" / f"{number:04d}.jpg", np.where(mask, first, second))


def shapes_anywhere(root, seed=7, per_class=150):
    synthetic.generate_dataset(root, images_per_class=per_class, seed=seed, min_size=80, max_size=160)


def _glyph(text, rng, size, ink=None):
    """``text`` drawn at a random font, scale, slant and position on a noisy background."""
    paper = _colour(rng)
    ink = _colour(rng) if ink is None else ink
    if np.abs(ink - paper).sum() < 150:  # keep it legible
        paper = 255 - ink
    image = np.clip(paper + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
    font = FONTS[rng.integers(len(FONTS))]
    scale = rng.uniform(0.35, 0.7) * size / 24
    thickness = int(rng.integers(1, max(2, size // 20) + 1))
    (width, height), _ = cv2.getTextSize(text, font, scale, thickness)
    x = int(rng.integers(0, max(1, size - width)))
    y = int(rng.integers(height, max(height + 1, size)))
    cv2.putText(image, text, (x, y), font, scale, tuple(int(value) for value in ink), thickness, cv2.LINE_AA)
    shear = np.float32([[1, rng.uniform(-0.3, 0.3), 0], [0, 1, 0]])
    return cv2.warpAffine(image, shear, (size, size), borderMode=cv2.BORDER_REFLECT)


def glyphs(root, seed=1, per_class=120, size=48):
    for digit in range(10):
        for number in range(per_class):
            rng = np.random.default_rng([seed, digit, number])
            _write(root / f"digit_{digit}" / f"{number:04d}.jpg", _glyph(str(digit), rng, size))


def tiny_classes(root, seed=2, per_class=12, size=48):
    for index, letter in enumerate(LETTERS[:20]):
        for number in range(per_class):
            rng = np.random.default_rng([seed, index, number])
            _write(root / f"letter_{letter}" / f"{number:04d}.jpg", _glyph(letter, rng, size))


def imbalanced(root, seed=3, size=48):
    counts = np.round(np.geomspace(200, 12, 10)).astype(int)
    for index, (letter, count) in enumerate(zip("KLMNPRSTUV", counts)):
        for number in range(count):
            rng = np.random.default_rng([seed, index, number])
            _write(root / f"{letter}_{count}" / f"{number:04d}.jpg", _glyph(letter, rng, size))


INKS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "black": (15, 15, 15)}


def many_classes(root, seed=4, per_class=15, size=40):
    for index, letter in enumerate(LETTERS):
        for ink_index, (ink_name, ink) in enumerate(INKS.items()):
            for number in range(per_class):
                rng = np.random.default_rng([seed, index, ink_index, number])
                # Ink of a fixed colour per class on random paper: colour decides half the class.
                image = _glyph(letter, rng, size, ink=np.array(ink, np.float32))
                _write(root / f"{letter}_{ink_name}" / f"{number:04d}.jpg", image)


def mixed_sizes(root, seed=5, per_class=60):
    for class_index, name in enumerate(synthetic.SHAPE_NAMES[:8]):
        for number in range(per_class):
            rng = np.random.default_rng([seed, class_index, number])
            width = int(rng.integers(24, 481))
            height = int(np.clip(width * rng.uniform(0.5, 2.0), 24, 480))
            image, _ = synthetic.render_image(name, rng, height, width)
            if number % 10 == 0:  # a grayscale PNG now and then
                _write(root / name / f"{number:04d}.png", cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
            else:
                _write(root / name / f"{number:04d}.jpg", image)
    (root / synthetic.SHAPE_NAMES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")


def sklearn_digits(root):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for number, (image, label) in enumerate(zip(digits.images, digits.target)):
        gray = np.round(image * 255 / 16).astype(np.uint8)  # 0-16 -> 0-255, 8x8
        _write(root / f"digit_{label}" / f"{number:04d}.png", gray)


def sklearn_photos(root, seed=6, per_class=60):
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg: (427, 640, 3) uint8 RGB
    rng = np.random.default_rng(seed)
    for photo_index, photo in enumerate(photos):
        height, width = photo.shape[:2]
        for region in range(4):  # quadrants of each photograph
            top, left = (region // 2) * height // 2, (region % 2) * width // 2
            for number in range(per_class):
                side = int(rng.integers(64, 161))  # square crops wholly inside the region
                y = top + int(rng.integers(0, height // 2 - side + 1))
                x = left + int(rng.integers(0, width // 2 - side + 1))
                crop = photo[y:y + side, x:x + side]
                _write(root / f"photo{photo_index}_region{region}" / f"{number:04d}.jpg", crop)


# name -> (generator, image size, epochs for the comparison)
DATASETS = {
    "textures": (textures, 64, 25),
    "shapes_anywhere": (shapes_anywhere, 64, 30),
    "glyphs": (glyphs, 48, 40),
    "tiny_classes": (tiny_classes, 48, 60),
    "imbalanced": (imbalanced, 48, 40),
    "many_classes": (many_classes, 32, 40),
    "mixed_sizes": (mixed_sizes, 64, 40),
    "sklearn_digits": (sklearn_digits, 32, 20),
    "sklearn_photos": (sklearn_photos, 64, 25),
}
