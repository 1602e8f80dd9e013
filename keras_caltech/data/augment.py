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
        ``load`` is :func:`load_size` of the same config.
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
        steps.append(keras.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=factor, contrast_factor=factor,
            saturation_factor=(0.5 - factor / 2, 0.5 + factor / 2), seed=seed + 7, name="color_jitter"))
    if not steps:
        return None
    return keras.Sequential(steps, name="augment")


def load_size(augment, image_size):
    """The side images are decoded to before augmentation: larger when a crop follows."""
    return max(augment.resize_crop, image_size)


def _seed_states(augmenter):
    """The state variables of every keras.random.SeedGenerator the augmenter's layers draw from."""
    return [value.state for layer in augmenter.layers for value in vars(layer).values()
            if isinstance(value, keras.random.SeedGenerator)]


def augment_batch(augmenter, images, key):
    """Applies ``augmenter`` to one batch with its random draws fixed by ``key``.

    Keras' random layers draw from seed-generator variables that advance with every
    call; in a parallel tf.data map the calls race, so which batch gets which draw
    depends on thread timing, and a resumed run could not replay it. Here each
    generator's state is replaced, for this call only, by a seed folded from ``key``
    (``keras.StatelessScope``; the variables themselves never change), so the result is a
    function of (key, images) alone. keras-cv's RandomCropAndResize draws from its own
    tf.random.Generator instead and stays unkeyed.

    Args:
        augmenter: a model from :func:`build_augmenter`.
        images: float32 (batch, load, load, 3), 0-255.
        key: int64 (2,) tensor, e.g. (epoch seed, batch index).

    Returns:
        float32 (batch, image_size, image_size, 3), 0-255.
    """
    key = tf.cast(key, tf.int64)
    states = [(state, tf.cast(tf.random.experimental.stateless_fold_in(key, index), state.dtype))
              for index, state in enumerate(_seed_states(augmenter))]
    with keras.StatelessScope(state_mapping=states):
        return augmenter(images, training=True)
