"""Training-split augmentation built from Keras preprocessing layers.

Augmentation runs in the tf.data pipeline on training batches only, never inside the
model, so evaluation and the exported serving graph cannot contain it. Its randomness
is keyed per batch (:func:`augment_batch`), so a resumed run replays it exactly.
"""

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
    if augment.rotation:
        steps.append(keras.layers.RandomRotation(augment.rotation, fill_mode="reflect", seed=seed + 3,
                                                 name="rotation"))
    if augment.translation:
        steps.append(keras.layers.RandomTranslation(augment.translation, augment.translation,
                                                    fill_mode="reflect", seed=seed + 4, name="translation"))
    if augment.zoom:
        steps.append(keras.layers.RandomZoom(augment.zoom, fill_mode="reflect", seed=seed + 5, name="zoom"))
    if augment.shear:
        steps.append(keras.layers.RandomShear(augment.shear, augment.shear, fill_mode="reflect",
                                              seed=seed + 6, name="shear"))
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
