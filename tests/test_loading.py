"""Tests for keras_caltech.models.loading: safe-mode loading and its user errors.

An unreadable model file is checked in test_hostile_inputs.py, as user nobody: root reads
any file whatever its mode bits.
"""

import zipfile

import keras
import numpy as np
import pytest

from keras_caltech.errors import UserError
from keras_caltech.models import create_model
from keras_caltech.models.loading import load_model_safely, model_image_size


def test_a_registered_model_round_trips_with_its_custom_layers(tmp_path):
    model = create_model("mycnn", num_classes=3, image_size=32, mean=(0.4, 0.5, 0.6))
    path = tmp_path / "mycnn.keras"
    model.save(path)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")

    loaded = load_model_safely(path)

    assert loaded.get_layer("normalize").mean == pytest.approx([102.0, 127.5, 153.0])
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_a_model_with_a_python_lambda_is_refused_because_of_safe_mode(tmp_path):
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x * 2, name="double")(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)

    with pytest.raises(UserError, match="safe mode forbids deserializing arbitrary code") as error:
        load_model_safely(path)

    assert str(path) in str(error.value)


def test_a_missing_path_is_named(tmp_path):
    path = tmp_path / "nowhere.keras"

    with pytest.raises(UserError, match="model file not found") as error:
        load_model_safely(path)

    assert str(path) in str(error.value)


def test_a_directory_is_refused_and_the_keras_files_inside_are_listed(tmp_path):
    (tmp_path / "best.keras").write_bytes(b"")

    with pytest.raises(UserError, match="received a directory") as error:
        load_model_safely(tmp_path)

    assert "best.keras" in str(error.value)


def test_a_zero_byte_file_is_not_a_keras_file(tmp_path):
    path = tmp_path / "empty.keras"
    path.write_bytes(b"")

    with pytest.raises(UserError, match="is not a .keras model file.*0-byte"):
        load_model_safely(path)


def test_a_zip_without_a_keras_config_is_a_user_error(tmp_path):
    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")

    with pytest.raises(UserError, match="could not load model"):
        load_model_safely(path)


def image_model(*input_shapes):
    """A tiny model on one image input per shape (without the batch axis)."""
    inputs = [keras.Input(shape) for shape in input_shapes]
    features = [keras.layers.GlobalAveragePooling2D()(image) for image in inputs]
    merged = features[0] if len(features) == 1 else keras.layers.Concatenate()(features)
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, keras.layers.Dense(2)(merged), name="tiny")


def test_the_image_size_is_the_side_of_a_fixed_square_input():
    assert model_image_size(create_model("mycnn", num_classes=3, image_size=32)) == 32
    sequential = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Conv2D(2, 3)])
    assert model_image_size(sequential) == 24


@pytest.mark.parametrize("model, received", [
    (lambda: image_model((None, None, 3)), "takes images of shape (None, None, 3)"),
    (lambda: image_model((32, 40, 3)), "takes images of shape (32, 40, 3)"),
    (lambda: image_model((32, 32, 3), (32, 32, 3)), "takes 2 inputs"),
    (lambda: keras.Sequential([keras.layers.Conv2D(2, 3)], name="tiny"), "has no defined input shape"),
], ids=["flexible", "not_square", "two_inputs", "never_built"])
def test_a_model_the_pipeline_cannot_feed_is_refused_naming_who_needs_the_size(model, received):
    with pytest.raises(UserError) as error:
        model_image_size(model(), "explain.py")
    assert str(error.value) == (f"model 'tiny' {received}; explain.py needs a fixed square input, "
                                "as train.py builds")
