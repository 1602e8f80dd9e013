"""Test-time augmentation: crop geometry, view stacking, and known answers through the pipeline."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras
from keras_caltech.errors import UserError
from keras_caltech.config import check_choice
from keras_caltech.evaluation.tta import predict_with_tta, ten_crop, tta_load_size, tta_views


def arange_images(batch, side, channels=3):
    """Images whose every value is distinct, so any misplaced pixel shows."""
    return np.arange(batch * side * side * channels, dtype=np.float32).reshape(batch, side, side, channels)


def expected_ten_crop(images, crop, centre):
    """The 10 crops written out by hand: (10, batch, crop, crop, channels)."""
    far = images.shape[1] - crop
    corners = [images[:, :crop, :crop], images[:, :crop, far:], images[:, far:, :crop], images[:, far:, far:],
               images[:, centre:centre + crop, centre:centre + crop]]
    return np.stack(corners + [corner[:, :, ::-1] for corner in corners])


# (side, crop, centre offset): even margin, odd margin (rounded down), the 32 px model's 37 -> 32.
GEOMETRIES = [(6, 4, 1), (7, 4, 1), (37, 32, 2)]


@pytest.mark.parametrize("side, crop, centre", GEOMETRIES)
def test_ten_crop_is_exactly_the_four_corners_the_centre_and_their_mirrors(side, crop, centre):
    images = arange_images(2, side)
    crops = ten_crop(tf.constant(images), crop).numpy()
    assert crops.shape == (10, 2, crop, crop, 3)
    np.testing.assert_array_equal(crops, expected_ten_crop(images, crop, centre))


def test_ten_crop_gives_the_same_crops_inside_tf_data():
    images = arange_images(3, 7)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(3).map(lambda batch: ten_crop(batch, 4))
    np.testing.assert_array_equal(next(iter(dataset)).numpy(), expected_ten_crop(images, 4, 1))


def test_views_are_stacked_view_major_so_logits_reshape_to_views_by_images():
    images = arange_images(3, 7)
    crops = expected_ten_crop(images, 4, 1)  # (10, 3, 4, 4, 3)
    stacked = tta_views(tf.constant(images), "10crop", 4).numpy()
    assert stacked.shape == (30, 4, 4, 3)
    for view in range(10):
        np.testing.assert_array_equal(stacked[view * 3:(view + 1) * 3], crops[view])
    flipped = tta_views(tf.constant(images[:, :4, :4]), "flip", 4).numpy()
    np.testing.assert_array_equal(flipped, np.concatenate([images[:, :4, :4], images[:, :4, :4][:, :, ::-1]]))
    np.testing.assert_array_equal(tta_views(tf.constant(images), "none", 7).numpy(), images)


@pytest.mark.parametrize("mode, image_size, resize_crop, expected", [
    ("10crop", 224, 0, 256), ("10crop", 32, 0, 37), ("10crop", 224, 288, 288),
    ("10crop", 224, 200, 256),  # a resize_crop below the input size cannot be cropped from
    ("flip", 224, 288, 224), ("none", 64, 0, 64)])
def test_ten_crop_resizes_to_256_over_224_of_the_input_or_to_the_training_crop_source(
        mode, image_size, resize_crop, expected):
    assert tta_load_size(mode, image_size, resize_crop) == expected


def test_an_unknown_tta_mode_is_refused_with_the_valid_modes_listed():
    with pytest.raises(UserError, match=r"unknown TTA mode '5crop'. Valid modes: none, flip, 10crop"):
        check_choice("eval.tta", "5crop")  # as evaluate and ensemble check --tta


def top_left_mean_model(image_size, region):
    """A hand-made 'classifier' whose 3 logits are the RGB means of the top-left region x region."""
    inputs = keras.Input((image_size, image_size, 3))
    cropped = keras.layers.Cropping2D(((0, image_size - region), (0, image_size - region)))(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(cropped))


def hand_computed_logits(image, mode, image_size, region):
    """What averaging the position-dependent model's logits over the views must give."""
    def top_left(top, left):  # the model on the crop at (top, left)
        return image[top:top + region, left:left + region].mean(axis=(0, 1))

    def top_left_of_mirror(top, left):  # mirroring moves the crop's top-right region to the top-left
        return image[top:top + region, left + image_size - region:left + image_size].mean(axis=(0, 1))

    far, centre = image.shape[0] - image_size, (image.shape[0] - image_size) // 2
    if mode == "none":  # an image larger than the input: a run trained on crops sees its centre
        return top_left(centre, centre)
    if mode == "flip":
        return (top_left(centre, centre) + top_left_of_mirror(centre, centre)) / 2
    offsets = [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]
    return np.mean([top_left(*offset) for offset in offsets]
                   + [top_left_of_mirror(*offset) for offset in offsets], axis=0)


@pytest.mark.parametrize("resize_crop", [0, 40])
@pytest.mark.parametrize("mode", ["none", "flip", "10crop"])
def test_tta_on_a_position_dependent_model_gives_the_hand_computed_average(tmp_path, mode, resize_crop):
    image_size, region = 32, 8
    # Files saved at the side they are resized to, so resizing changes nothing.
    side = max(resize_crop, tta_load_size(mode, image_size, resize_crop))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(3)]
    paths = [tmp_path / f"{index}.png" for index in range(3)]
    for path, image in zip(paths, images):  # two images in one batch, one in the last: batching is checked too
        Image.fromarray(image).save(path)
    logits, labels, files = predict_with_tta(top_left_mean_model(image_size, region), paths, [0, 0, 0], mode,
                                             batch_size=2 * {"none": 1, "flip": 2, "10crop": 10}[mode],
                                             resize_crop=resize_crop)
    assert [path.name for path in files] == ["0.png", "1.png", "2.png"] and list(labels) == [0, 0, 0]
    expected = [hand_computed_logits(image.astype(np.float64), mode, image_size, region) for image in images]
    np.testing.assert_allclose(logits, np.array(expected), atol=1e-3)


def test_a_model_without_a_fixed_square_input_is_refused_before_any_image_is_read(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name="flexible")
    with pytest.raises(UserError, match=r"model 'flexible' takes images of shape \(None, None, 3\); "
                                        r"evaluation needs a fixed square input"):
        predict_with_tta(model, [tmp_path / "missing.png"], [0], "none", batch_size=2)  # never read
