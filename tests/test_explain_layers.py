"""Layer lookup and receptive fields, checked against hand computation and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from keras_caltech.errors import UserError
from keras_caltech.explain import (default_layer_name, find_layer, receptive_field,
                                   spatial_layer_names, tap_model)
from keras_caltech.models import create_model


def hand_stack():
    """A stack whose fields are worked out by hand in the test below (all-ones kernels)."""
    inputs = keras.Input((32, 32, 1))
    ones = dict(kernel_initializer="ones", use_bias=False)
    x = layers.Conv2D(1, 3, padding="valid", name="conv_valid", **ones)(inputs)  # 30x30
    x = layers.AveragePooling2D(2, name="pool")(x)  # 15x15
    x = layers.Conv2D(1, 3, strides=2, padding="same", name="conv_same_s2", **ones)(x)  # 8x8
    x = layers.ZeroPadding2D(1, name="pad")(x)  # 10x10
    x = layers.Conv2D(1, 3, dilation_rate=2, padding="valid", name="conv_dilated", **ones)(x)  # 6x6
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2)(x))


def test_receptive_fields_of_a_hand_computed_stack():
    model = hand_stack()
    # conv 3 valid: size 3, stride 1, centre of unit 0 at pixel 1.
    assert receptive_field(model, "conv_valid") == (3, 1, 1.0)
    # pool 2/2: size 3 + 1 = 4, stride 2, centre 1 + 0.5 = 1.5.
    assert receptive_field(model, "pool") == (4, 2, 1.5)
    # conv 3 stride 2 "same" on 15 px: 15 % 2 = 1 -> pad 3 - 1 = 2 in total, 1 before:
    # size 4 + 2 * 2 = 8, stride 4, centre 1.5 + (1 - 1) * 2 = 1.5.
    assert receptive_field(model, "conv_same_s2") == (8, 4, 1.5)
    # zero padding 1 moves unit 0 one unit (4 px) up-left: centre -2.5.
    assert receptive_field(model, "pad") == (8, 4, -2.5)
    # dilated 3 -> 5 wide: size 8 + 4 * 4 = 24, stride 4, centre -2.5 + 2 * 4 = 5.5.
    assert receptive_field(model, "conv_dilated") == (24, 4, 5.5)


@pytest.mark.parametrize("layer_name, row, col", [
    ("conv_same_s2", 0, 0), ("conv_same_s2", 3, 5), ("conv_dilated", 2, 1)])
def test_receptive_field_box_is_where_the_unit_has_a_gradient(layer_name, row, col):
    model = hand_stack()  # all-ones kernels: every pixel in the window has gradient > 0
    assert receptive_field(model, layer_name).box(row, col, (32, 32)) == gradient_box(
        model, layer_name, row, col)


def test_receptive_field_box_holds_the_gradient_where_pixels_are_never_used():
    # Pixels 30 and 31 fall off the valid conv + floor pooling: the last unit's window
    # reaches them, but no gradient does.
    model = hand_stack()
    field_box = receptive_field(model, "conv_dilated").box(5, 5, (32, 32))
    assert field_box == (14, 14, 32, 32)
    assert gradient_box(model, "conv_dilated", 5, 5) == (14, 14, 30, 30)


def gradient_box(model, layer_name, row, col):
    """[x0, y0, x1, y1) around the input pixels with a gradient from unit (row, col)."""
    features = tap_model(model, [layer_name])
    image = tf.ones((1, 32, 32, 1))
    with tf.GradientTape() as tape:
        tape.watch(image)
        unit = features(image)[0][0, row, col, 0]
    support = np.argwhere(tape.gradient(unit, image).numpy()[0, ..., 0] > 0)
    (y0, x0), (y1, x1) = support.min(axis=0), support.max(axis=0) + 1
    return int(x0), int(y0), int(x1), int(y1)


def test_receptive_field_of_mycnn_gradcam_layer():
    model = create_model("mycnn", num_classes=3, image_size=32)
    # three (conv 3 same, pool 2) blocks then conv 3 same: 3 +1 +2*2 +2 +4*2 +4 +8*2 = 38.
    assert receptive_field(model, "block4_relu") == (38, 8, 3.5)


def test_receptive_field_of_a_layer_after_an_unknown_resize_fails():
    inputs = keras.Input((16, 16, 3))
    x = layers.Resizing(8, 8, name="resize")(inputs)
    x = layers.Conv2D(2, 3, name="conv")(x)
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))
    with pytest.raises(UserError, match="'resize'.*changes the spatial size"):
        receptive_field(model, "conv")


def test_default_layer_is_the_registered_gradcam_layer_else_the_last_4d_layer():
    model = create_model("mycnn", num_classes=3, image_size=32)
    assert default_layer_name(model) == "block4_relu"  # declared, though block4_pool is later
    renamed = keras.Model(model.inputs[0], model.outputs[0], name="not_registered")
    assert default_layer_name(renamed) == "block4_pool"


def test_nested_layers_are_found_by_path_and_listed_among_the_4d_layers():
    backbone_input = keras.Input((16, 16, 3))
    backbone = keras.Model(backbone_input, layers.Conv2D(2, 3, name="inner_conv")(backbone_input),
                           name="backbone")
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(backbone(inputs))))
    assert find_layer(model, "backbone/inner_conv") is backbone.get_layer("inner_conv")
    assert spatial_layer_names(model) == ["backbone", "backbone/inner_conv"]
    with pytest.raises(UserError, match="no layer 'backbone/outer_conv'"):
        find_layer(model, "backbone/outer_conv")
