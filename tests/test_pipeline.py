import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_caltech.config import AugmentConfig
from keras_caltech.data import pipeline, scan
from keras_caltech.data.augment import RandomGeometry, augment_batch, build_augmenter, load_size
from keras_caltech.data.splits import stratified_split


@pytest.fixture()
def held_out(tiny_dataset):
    """(scan result, the test split's (relative path, label) pairs, its (paths, labels))."""
    result = scan.scan_dataset(tiny_dataset)
    splits = stratified_split(result.files, result.class_names, seed=0)
    return result, splits["test"], pipeline.split_files(result.root, splits["test"])


def test_pipeline_labels_and_files_are_the_split_in_its_saved_order(held_out):
    result, pairs, files = held_out
    dataset = pipeline.make_dataset(*files, 32, 4)
    labels = np.concatenate([batch_labels.numpy() for _, batch_labels in dataset])
    assert labels.tolist() == [label for _, label in pairs]
    assert dataset.file_paths == [str(result.root / relative) for relative, _ in pairs]


def test_the_split_reader_decodes_and_resizes_exactly_as_image_dataset_from_directory(held_out):
    """One source of truth: the reader, load_image, decode_and_resize and Keras' loader agree bit for bit."""
    result, _, files = held_out
    reference = keras.utils.image_dataset_from_directory(
        result.root, class_names=result.class_names, batch_size=None, image_size=(40, 40), shuffle=False,
        interpolation="bilinear", verbose=False)
    expected = {os.path.realpath(path): image.numpy() for path, (image, _) in zip(reference.file_paths, reference)}
    batch, _ = next(iter(pipeline.make_dataset(*files, 40, 64)))
    for index, path in enumerate(files[0][:5]):
        np.testing.assert_array_equal(batch[index].numpy(), expected[os.path.realpath(path)])
        np.testing.assert_array_equal(batch[index].numpy(), pipeline.load_image(path, 40))
        encoded = tf.io.read_file(path)
        np.testing.assert_array_equal(batch[index].numpy(), pipeline.decode_and_resize(encoded, 40).numpy())


def test_a_run_trained_on_crops_is_evaluated_on_the_central_crop_everywhere(held_out):
    """augment.resize_crop=40 at 32 px: every test path resizes to 40 and keeps the middle 32."""
    from keras_caltech.evaluation.tta import tta_views

    _, _, files = held_out
    cropped = pipeline.make_dataset(*files, 32, 64, resize_crop=40)
    images, _ = next(iter(cropped))
    whole, _ = next(iter(pipeline.make_dataset(*files, 32, 64, load_size=40)))
    np.testing.assert_array_equal(images.numpy(), whole.numpy()[:, 4:36, 4:36])
    np.testing.assert_array_equal(tta_views(whole, "10crop", 32).numpy()[4 * len(whole):5 * len(whole)],
                                  images.numpy())  # the same view as 10-crop's centre crop
    for index, path in enumerate(cropped.file_paths[:3]):
        np.testing.assert_array_equal(images[index].numpy(), pipeline.load_image(path, 32, resize_crop=40))
    plain, _ = next(iter(pipeline.make_dataset(*files, 32, 64, resize_crop=32)))
    np.testing.assert_array_equal(plain.numpy(), next(iter(pipeline.make_dataset(
        *files, 32, 64)))[0].numpy())  # a resize_crop not above the size: no crop


def test_the_crop_window_is_the_part_of_the_original_the_model_sees():
    # 200 x 100 resized to 40 x 40, middle 32 kept: pixels 4-36 of 40 -> x 20-180, y 10-90.
    assert pipeline.crop_window(200, 100, 32, resize_crop=40) == (20.0, 10.0, 180.0, 90.0)
    assert pipeline.crop_window(200, 100, 32) == (0.0, 0.0, 200.0, 100.0)
    image = np.zeros((100, 200, 3), np.uint8)
    image[45:55, 95:105] = 255  # a white square in the middle stays in the middle
    view = pipeline.resize_for_model(image, 32, resize_crop=40).numpy()
    assert view.shape == (32, 32, 3) and view[16, 16, 0] == 255 and view[0, 0, 0] == 0


def test_broken_files_never_reach_an_epoch(messy_dataset, tmp_path):
    root, usable, _ = messy_dataset
    result = scan.scan_dataset(root)
    batches = pipeline.EpochBatches(*pipeline.split_files(result.root, result.files), result.class_names, 24, 5, augmenter=build_augmenter(AugmentConfig(), 24))
    for epoch in range(2):  # two full epochs, every file decoded
        count = sum(int(images.shape[0]) for images, _ in batches(epoch))
        assert count == len(result.files) and len(batches) == -(-count // 5)
    for images, _ in batches(0):
        assert images.shape[1:] == (24, 24, 3) and np.isfinite(images.numpy()).all()


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_each_epoch_is_a_function_of_seed_and_epoch_alone(held_out, cache):
    """A resumed run rebuilds epoch k without replaying epochs 0..k-1: same order, same flips."""
    result, _, files = held_out

    def epoch(batches, index):
        pairs = [(images.numpy(), labels.numpy()) for images, labels in batches(index)]
        return np.concatenate([images for images, _ in pairs]), np.concatenate([labels for _, labels in pairs])

    def make(seed):
        return pipeline.EpochBatches(*files, result.class_names, 16, 3, seed=seed, cache=cache,
                                     augmenter=build_augmenter(AugmentConfig(horizontal_flip=True), 16, seed=seed))

    first = make(3)
    epoch0, epoch1 = epoch(first, 0), epoch(first, 1)
    assert sorted(epoch0[1]) == sorted(epoch1[1]) and not np.array_equal(epoch0[1], epoch1[1])
    assert epoch0[1].tolist() != sorted(epoch0[1].tolist())  # not class by class
    fresh = make(3)  # a new process's view of the run: epoch 1 first, never epoch 0
    for expected, received in zip(epoch1, epoch(fresh, 1)):
        np.testing.assert_array_equal(received, expected)
    for expected, received in zip(epoch0, epoch(fresh, 0)):
        np.testing.assert_array_equal(received, expected)
    assert not np.array_equal(epoch(make(4), 1)[1], epoch1[1])


def test_keyed_augmentation_is_the_same_eagerly_and_inside_tf_data_and_varies_with_the_key():
    augmenter = build_augmenter(ALL_AUGMENTATIONS, 32, seed=1)
    images = np.random.default_rng(0).uniform(0, 255, size=(4, 40, 40, 3)).astype(np.float32)
    key = tf.constant([7, 2], tf.int64)
    eager = augment_batch(augmenter, images, key).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(images).map(lambda batch: augment_batch(augmenter, batch, key))))
    np.testing.assert_allclose(mapped.numpy(), eager, atol=1e-3)
    np.testing.assert_array_equal(augment_batch(augmenter, images, key).numpy(), eager)  # no hidden state
    assert not np.allclose(augment_batch(augmenter, images, tf.constant([7, 3], tf.int64)).numpy(), eager)


def test_unknown_cache_mode_lists_the_valid_ones(held_out):
    result, _, files = held_out
    with pytest.raises(ValueError, match="none, memory, disk"):
        pipeline.make_dataset(*files, 16, 4, cache="ram")


def test_channel_statistics_match_a_hand_computation():
    images = np.zeros((2, 4, 4, 3), np.float32)
    images[0, ..., 0] = 255.0  # channel 0: half the pixels 1.0, half 0.0 -> mean .5, std .5
    images[..., 1] = 51.0  # channel 1: constant 0.2 -> std 0
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(2, np.int32))).batch(1)
    mean, std = pipeline.channel_statistics(dataset)
    np.testing.assert_allclose(mean, [0.5, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(std, [0.5, 0.0, 0.0], atol=1e-5)


def test_channel_statistics_equal_a_float64_reference_over_many_batches_and_a_partial_last_one():
    rng = np.random.default_rng(0)
    # 5 images of 120 x 100: batches of 24,000 pixels (more than one slice of rows) and a last one of 12,000
    images = rng.normal([120.0, 60.0, 200.0], [30.0, 10.0, 25.0], size=(5, 120, 100, 3)).clip(0, 255)
    images = images.astype(np.float32)  # (5, 120, 100, 3), 0-255, as the pipeline yields them
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(5, np.int32))).batch(2)
    for max_batches, used in ((None, 5), (2, 4)):
        pixels = images[:used].reshape(-1, 3).astype(np.float64) / 255.0
        mean, std = pipeline.channel_statistics(dataset, max_batches=max_batches)
        np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(std, pixels.std(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(mean, np.array([120.0, 60.0, 200.0]) / 255, atol=0.005)  # the data are as made
    np.testing.assert_allclose(std, np.array([30.0, 10.0, 25.0]) / 255, atol=0.005)


ALL_AUGMENTATIONS = AugmentConfig(horizontal_flip=True, rotation=0.05, translation=0.1, zoom=0.1, shear=0.1,
                                  resize_crop=40, color_jitter=0.2)


@pytest.mark.parametrize("augment", [ALL_AUGMENTATIONS,
                                     dataclasses.replace(ALL_AUGMENTATIONS, random_resized_crop=True)],
                         ids=["affine+crop+jitter", "random-resized-crop"])
def test_augmentation_works_eagerly_and_inside_tf_data(augment):
    augmenter = build_augmenter(augment, 32, seed=1)
    assert load_size(augment, 32) == 40
    images = np.random.default_rng(0).uniform(0, 255, size=(4, 40, 40, 3)).astype(np.float32)
    eager = augmenter(images, training=True)
    assert eager.shape == (4, 32, 32, 3)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2).map(lambda batch: augmenter(batch, training=True))
    for batch in dataset:
        values = batch.numpy()
        assert values.shape == (2, 32, 32, 3)
        assert np.isfinite(values).all() and values.min() >= -1e-3 and values.max() <= 255.001


def test_colour_jitter_keeps_pixels_in_range_despite_the_keras_saturation_bug():
    """Keras' RandomSaturation on 0-255 images yields negative pixels; ours must not."""
    augmenter = build_augmenter(AugmentConfig(horizontal_flip=False, color_jitter=0.5), 40, seed=0)
    images = np.random.default_rng(1).uniform(0, 255, size=(16, 40, 40, 3)).astype(np.float32)
    keras_jitter = keras.layers.RandomColorJitter(value_range=(0, 255), saturation_factor=(0.25, 0.75), seed=0)
    assert min(float(np.min(keras_jitter(images, training=True))) for _ in range(5)) < -1.0  # the bug
    for _ in range(5):
        values = augmenter(images, training=True).numpy()
        assert values.min() >= -1e-3 and values.max() <= 255.001
        assert not np.allclose(values, images)  # it did change colours


def test_flip_is_horizontal_only_and_no_augmentation_means_none():
    augmenter = build_augmenter(AugmentConfig(horizontal_flip=True), 16)
    image = np.zeros((1, 16, 16, 3), np.float32)
    image[:, :4] = 255.0  # top rows bright: a vertical flip would move them
    outputs = [augmenter(image, training=True).numpy() for _ in range(20)]
    assert all(np.array_equal(out[:, :4], image[:, :4]) for out in outputs)
    ramp = np.tile(np.arange(16, dtype=np.float32)[None, None, :, None], (1, 16, 1, 3))  # left-to-right ramp
    flipped = [augmenter(ramp, training=True).numpy() for _ in range(20)]
    assert any(np.array_equal(out, ramp[:, :, ::-1]) for out in flipped)  # some are mirrored
    assert all(np.array_equal(out, ramp) or np.array_equal(out, ramp[:, :, ::-1]) for out in flipped)
    assert build_augmenter(AugmentConfig(horizontal_flip=False), 16) is None


def _ramps(side):
    """(1, side, side, 3) channels x, y and x + y: bilinear sampling of them is exact, so they read off a warp."""
    rows, columns = np.mgrid[0:side, 0:side].astype(np.float32)
    return np.stack([columns, rows, columns + rows], axis=-1)[None]


def test_one_geometry_warp_equals_keras_rotation_translation_and_zoom_in_turn():
    images = _ramps(65)
    keras_layers = keras.Sequential([keras.layers.RandomRotation((0.05, 0.05)),
                                     keras.layers.RandomTranslation((0.1, 0.1), (-0.05, -0.05)),
                                     keras.layers.RandomZoom((-0.2, -0.2))])
    expected = keras_layers(images, training=True).numpy()
    # draws in [-1, 1] scale each range: a full rotation draw, shifts -0.05 and 0.1 of the side, zoom 0.8
    geometry = RandomGeometry(rotation=0.05, translation=1.0, zoom=0.2)
    received = geometry.warp(tf.constant(images), tf.constant([[1.0, -0.05, 0.1, -1.0, 0.0, 0.0]])).numpy()
    inside = slice(20, 45)  # away from the border, where three reflections differ from one
    np.testing.assert_allclose(received[0, inside, inside], expected[0, inside, inside], atol=1e-3)
    assert not np.allclose(received, images)


def test_geometry_shears_about_the_centre():
    images = _ramps(33)
    received = RandomGeometry(shear=0.5).warp(tf.constant(images), tf.constant([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]]))
    rows, columns = np.mgrid[0:33, 0:33].astype(np.float32)
    inside = (slice(12, 21), slice(12, 21))
    # each output pixel samples the input at x + 0.5 (y - 16): the centre row stays put
    np.testing.assert_allclose(received.numpy()[0, ..., 0][inside], (columns + 0.5 * (rows - 16))[inside], atol=1e-3)
    np.testing.assert_allclose(received.numpy()[0, ..., 1][inside], rows[inside], atol=1e-3)


def test_rotation_translation_zoom_and_shear_are_one_layer_of_the_augmenter():
    augmenter = build_augmenter(ALL_AUGMENTATIONS, 32, seed=1)
    names = [layer.name for layer in augmenter.layers]
    assert names.count("geometry") == 1
    assert not {"rotation", "translation", "zoom", "shear"} & set(names)
