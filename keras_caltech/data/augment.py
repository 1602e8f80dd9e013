"""Training-split augmentation built from Keras preprocessing layers.

Augmentation runs in the tf.data pipeline on training batches only, never inside the
model, so evaluation and the exported serving graph cannot contain it. Its randomness
is keyed per batch (:func:`augment_batch`), so a resumed run replays it exactly.
"""

import math

import keras
import tensorflow as tf


def build_augmenter(augment, image_size, seed=0):
    """Returns a Sequential of random layers for ``augment`` (an AugmentConfig), or None.

    Args:
        augment: the config's ``augment`` section.
        image_size: side of the square images the model takes.
        seed: base seed; each layer gets its own derived seed.

    Returns:
        A ``keras.Sequential`` mapping (batch, load, load, 3) 0-255 images to
        (batch, image_size, image_size, 3) 0-255 images, or None when nothing is enabled.
        ``load`` is :func:`load_size` of the same config. The section's ranges were
        checked when the config was loaded.
    """
    steps = []
    if augment.random_resized_crop:
        # Core Keras has no random-resized-crop; keras-cv does (imported only when used: it is slow to load).
        import keras_cv

        steps.append(keras_cv.layers.RandomCropAndResize(
            target_size=(image_size, image_size), crop_area_factor=(augment.crop_area_min, 1.0),
            aspect_ratio_factor=(3 / 4, 4 / 3), seed=seed + 1, name="random_resized_crop"))
    elif augment.resize_crop:
        steps.append(keras.layers.RandomCrop(image_size, image_size, seed=seed + 1, name="random_crop"))
    if augment.horizontal_flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed + 2, name="flip"))
    if augment.rotation or augment.translation or augment.zoom or augment.shear:
        steps.append(RandomGeometry(augment.rotation, augment.translation, augment.zoom, augment.shear,
                                    seed=seed + 3, name="geometry"))
    if augment.color_jitter:
        factor = augment.color_jitter
        steps.append(keras.layers.RandomBrightness(factor, value_range=(0, 255), seed=seed + 7,
                                                   name="brightness"))
        steps.append(keras.layers.RandomContrast(factor, value_range=(0, 255), seed=seed + 8, name="contrast"))
        # Keras 3.15's RandomSaturation (and RandomColorJitter, which uses it) clips the
        # HSV saturation channel to value_range instead of [0, 1], so on 0-255 images a
        # saturation above 1 survives and RGB values go negative (seen down to -126). No
        # upstream issue found; workaround: saturate 0-1 images. Tested in test_pipeline.
        steps.append(keras.layers.Rescaling(1 / 255, name="to_unit_range"))
        steps.append(keras.layers.RandomSaturation((0.5 - factor / 2, 0.5 + factor / 2), value_range=(0, 1),
                                                   seed=seed + 9, name="saturation"))
        steps.append(keras.layers.Rescaling(255, name="from_unit_range"))
    if augment.rand_augment_ops:
        # num_ops operations drawn per image from Keras's list (shear, translation,
        # solarization, colour degeneration, ...), each at strength ``factor``.
        steps.append(keras.layers.RandAugment(
            value_range=(0, 255), num_ops=augment.rand_augment_ops, factor=augment.rand_augment_factor,
            seed=seed + 10, name="rand_augment"))
    if augment.random_erasing:
        # Last, so the erased patch is not rotated or recoloured. A (p, p) factor erases
        # with probability exactly p (a single float would draw p from [0, p]).
        steps.append(keras.layers.RandomErasing(
            factor=(augment.random_erasing, augment.random_erasing), value_range=(0, 255),
            seed=seed + 11, name="random_erasing"))
    if not steps:
        return None
    return keras.Sequential(steps, name="augment")


class RandomGeometry(keras.layers.Layer):
    """Random rotation, translation, zoom and shear as one resampling per image.

    Keras has a layer per warp (RandomRotation, RandomTranslation, RandomZoom,
    RandomShear), and each resamples the whole batch: three warps cost three times one
    (0.8 ms per 128 px image each on one CPU core, the largest cost of the input
    pipeline). Their matrices compose exactly, so this layer multiplies them and warps
    once, which also blurs less (one bilinear interpolation, not three) and reflects the
    original image at the border rather than an already reflected one.

    The draws, per image, uniform over the ranges (``0`` turns one off), with the
    ranges meaning what the Keras layers' single-number factors mean:
      - angle in [-rotation, rotation] of a full turn;
      - shift in [-translation, translation] of the side, vertical and horizontal apart;
      - scale in [1 - zoom, 1 + zoom], the same on both axes (above 1 zooms out);
      - shear in [-shear, shear], horizontal and vertical apart, about the centre (Keras'
        RandomShear shears about the top-left corner, which also shifts the image).

    Randomness comes from one ``keras.random.SeedGenerator``, so
    :func:`keyed_randomness` keys it like the Keras layers'.
    """

    def __init__(self, rotation=0.0, translation=0.0, zoom=0.0, shear=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.translation, self.zoom, self.shear = rotation, translation, zoom, shear
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        draws = keras.random.uniform((tf.shape(images)[0], 6), -1.0, 1.0, seed=self.seed_generator)
        return self.warp(images, draws)

    def warp(self, images, draws):
        """Warps ``images`` (batch, h, w, channels) by the transforms that ``draws`` (batch, 6), in [-1, 1], select."""
        height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
        angle = draws[:, 0] * self.rotation * 2 * math.pi
        shift_x, shift_y = draws[:, 1] * self.translation * width, draws[:, 2] * self.translation * height
        scale = 1.0 + draws[:, 3] * self.zoom
        shear_x, shear_y = draws[:, 4] * self.shear, draws[:, 5] * self.shear
        # Each warp maps an output pixel to the input pixel it samples, about the centre
        # c: q -> R (scale * S q - shift) for q = p - c, with the rotation R as Keras'
        # and the shear S = [[1, shear_x], [shear_y, 1]]; so A = scale * R S below.
        cos, sin = tf.cos(angle), tf.sin(angle)
        a00, a01 = scale * (cos - sin * shear_y), scale * (cos * shear_x - sin)
        a10, a11 = scale * (sin + cos * shear_y), scale * (sin * shear_x + cos)
        rotated_shift_x, rotated_shift_y = cos * shift_x - sin * shift_y, sin * shift_x + cos * shift_y
        centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
        offset_x = centre_x - a00 * centre_x - a01 * centre_y - rotated_shift_x
        offset_y = centre_y - a10 * centre_x - a11 * centre_y - rotated_shift_y
        zeros = tf.zeros_like(angle)
        transforms = tf.stack([a00, a01, offset_x, a10, a11, offset_y, zeros, zeros], axis=1)  # (batch, 8)
        return keras.ops.image.affine_transform(images, transforms, interpolation="bilinear", fill_mode="reflect")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "translation": self.translation,
                "zoom": self.zoom, "shear": self.shear, "seed": self.seed}


def load_size(augment, image_size):
    """The side images are decoded to before augmentation: larger when a crop follows."""
    return max(augment.resize_crop, image_size)


def keyed_randomness(layers, key):
    """A ``keras.StatelessScope`` in which ``layers`` draw their random numbers from ``key``.

    Keras' random layers draw from seed-generator variables that advance with every
    call; in a parallel tf.data map the calls race, so which batch gets which draw
    depends on thread timing, and a resumed run could not replay it. Inside this scope
    each layer's generator state is replaced, for the calls made in it only, by a seed
    folded from ``key`` (the variables themselves never change), so the draws are a
    function of ``key`` alone. Only the layers' own generators are keyed (RandAugment
    draws for its sub-layers from its own); keras-cv's RandomCropAndResize draws from a
    tf.random.Generator instead and stays unkeyed.

    Args:
        layers: Keras preprocessing layers (an augmenter's, MixUp, CutMix).
        key: int64 (2,) tensor.
    """
    key = tf.cast(key, tf.int64)
    generators = [value for layer in layers for value in vars(layer).values()
                  if isinstance(value, keras.random.SeedGenerator)]
    states = [(generator.state, tf.cast(tf.random.experimental.stateless_fold_in(key, index),
                                        generator.state.dtype))
              for index, generator in enumerate(generators)]
    return keras.StatelessScope(state_mapping=states)


def augment_batch(augmenter, images, key):
    """Applies ``augmenter`` to one batch with its random draws fixed by ``key`` (see :func:`keyed_randomness`).

    Args:
        augmenter: a model from :func:`build_augmenter`.
        images: float32 (batch, load, load, 3), 0-255.
        key: int64 (2,) tensor, e.g. (epoch seed, batch index).

    Returns:
        float32 (batch, image_size, image_size, 3), 0-255: a function of (key, images) alone.
    """
    with keyed_randomness(augmenter.layers, key):
        return augmenter(images, training=True)
