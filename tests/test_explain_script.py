"""explain.py end to end: a saved model and image files in, figures out, errors on one line."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import explain
from keras_caltech.explain import image_files
from keras_caltech.explain.image_files import METHODS, read_image
from keras_caltech.models import create_model

CLASS_NAMES = ["cat", "dog", "ferret"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 32 px MyCNN saved with class names, a colour PNG and a grey JPEG of another size."""
    folder = tmp_path_factory.mktemp("explain_script")
    model_path = folder / "model" / "mycnn.keras"
    model_path.parent.mkdir()
    create_model("mycnn", num_classes=3, image_size=32).save(model_path)
    (model_path.parent / "class_names.json").write_text(json.dumps(CLASS_NAMES))
    rng = np.random.default_rng(0)
    colour = folder / "colour.png"
    tf.io.write_file(str(colour), tf.io.encode_png(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)))
    grey = folder / "grey.jpg"
    tf.io.write_file(str(grey), tf.io.encode_jpeg(rng.integers(0, 256, (20, 20, 1), dtype=np.uint8)))
    return model_path, [str(colour), str(grey)]


def test_read_image_gives_rgb_0_255_at_the_model_size_and_the_original(saved):
    _, images = saved
    for path, original_shape in zip(images, [(40, 48, 3), (20, 20, 3)]):
        image = read_image(path, 32)
        assert image.pixels.shape == (32, 32, 3) and image.pixels.dtype == np.float32
        assert 0 <= image.pixels.min() and image.pixels.max() <= 255
        assert image.original.shape == original_shape and image.original.dtype == np.uint8


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_figures(saved, tmp_path, capsys, method):
    model_path, images = saved
    argv = ["--image", *images, "--model", str(model_path), "--method", method,
            "--output-dir", str(tmp_path), "--class", "dog"]
    if method == "feature-maps":
        argv += ["--layer", "block4_conv"]
    assert explain.main(argv) == 0
    figures = sorted(tmp_path.glob("*.png"))
    assert len(figures) == (1 if method == "patches" else 2)
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in figures)
    output = capsys.readouterr().out
    if method in ("patches", "feature-maps"):
        assert output.count("\n") == len(figures)
    else:  # a line per figure, and the top classes under it
        assert output.count("\n") == 2 * len(figures)
        assert "explained dog" in output and output.count("  top-3: ") == 2


def test_an_unknown_class_name_is_one_error_line_with_close_names(saved, tmp_path, capsys):
    model_path, images = saved
    code = explain.main(["--image", images[0], "--model", str(model_path), "--class", "dgo",
                         "--output-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: unknown class 'dgo'. Did you mean dog?")
    assert error.count("\n") == 1


def test_guided_backprop_of_a_channel_writes_a_figure_per_image_naming_the_neuron(saved, tmp_path, capsys):
    model_path, images = saved
    assert explain.main(["--image", *images, "--model", str(model_path), "--method", "guided-backprop",
                         "--layer", "block3_conv", "--channel", "5", "--output-dir", str(tmp_path)]) == 0
    figures = sorted(path.name for path in tmp_path.glob("*.png"))
    assert figures == ["colour_guided-backprop_block3_conv_channel5.png",
                       "grey_guided-backprop_block3_conv_channel5.png"]
    output = capsys.readouterr().out
    assert output.count("block3_conv channel 5 strongest at (") == 2 and output.count("  top-3: ") == 2


def test_patches_of_a_class_from_the_command_line_are_receptive_field_crops(tmp_path, capsys, monkeypatch):
    from test_explain import dark_images, evidence_model, plant_patch

    model_path = tmp_path / "evidence.keras"
    evidence_model().save(model_path)
    corners = [(4, 20), (20, 6)]
    paths = []
    for index, (image, (row, col)) in enumerate(zip(dark_images(2, seed=3), corners)):
        paths.append(tmp_path / f"square{index}.png")
        tf.io.write_file(str(paths[-1]), tf.io.encode_png(plant_patch(image, row, col).astype(np.uint8)))
    drawn, draw = [], image_files.patches_figure
    monkeypatch.setattr(image_files, "patches_figure",
                        lambda patches, title: drawn.append(patches) or draw(patches, title))
    assert explain.main(["--image", *map(str, paths), "--model", str(model_path), "--method", "patches",
                         "--class", "0", "--output-dir", str(tmp_path / "figures")]) == 0
    assert "2 patches for class 0 from 2 image(s), each the 8 px receptive field of a unit of spread" in \
        capsys.readouterr().out
    assert (tmp_path / "figures" / "patches_spread_class0.png").read_bytes()[:4] == b"\x89PNG"
    for patch in drawn[0]:
        x0, y0, x1, y1 = patch.box
        row, col = corners[patch.image_index]
        assert (x1 - x0, y1 - y0) == (8, 8) and x0 <= col and col + 4 <= x1 and y0 <= row and row + 4 <= y1


@pytest.mark.parametrize("arguments, message", [
    (["--method", "lime"], "error: argument --method: invalid choice: 'lime'"),
    (["--layer", "fc1"], "error: layer 'fc1' of model 'mycnn' is not spatial"),
    (["--class", "7"], "error: class index 7 is out of range"),
    (["--method", "patches"], "error: --method patches needs a unit"),
    (["--method", "guided-backprop", "--layer", "block3_conv", "--channel", "128"],
     "error: channel 128 is out of range: layer 'block3_conv' has 128 channels (0 to 127)"),
    (["--method", "guided-backprop", "--layer", "fc1", "--channel", "0"],
     "error: layer 'fc1' of model 'mycnn' is not spatial: its output has rank 2"),
    (["--method", "guided-backprop", "--layer", "block3_conv"],
     "error: --method guided-backprop follows a class logit back to the image; to follow a neuron"),
    (["--method", "gradcam", "--channel", "1"],
     "error: --channel picks a neuron for --method patches or guided-backprop. Received: --method gradcam"),
    (["--method", "patches", "--class", "dog", "--channel", "1"], "error: give --class (a class logit) or --channel"),
    (["--method", "guided-backprop", "--channel", "-1"], "error: --channel takes a channel index >= 0"),
])
def test_user_errors_return_2_with_one_line(saved, tmp_path, capsys, arguments, message):
    model_path, images = saved
    code = explain.main(["--image", images[0], "--model", str(model_path),
                         "--output-dir", str(tmp_path), *arguments])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith(message) and error.count("\n") == 1


@pytest.mark.parametrize("where, message", [
    ("a_file", "error: --output-dir {path} is a file, not a folder"),
    ("under_a_file", "error: cannot create folder {path}: Not a directory. Pick another --output-dir"),
    ("/proc/no-figures-here", "error: cannot create folder {path}: "),
])
def test_an_output_dir_that_cannot_be_a_folder_is_one_error_line(saved, tmp_path, capsys, where, message):
    model_path, images = saved
    (tmp_path / "a_file").write_text("x")
    path = {"a_file": tmp_path / "a_file", "under_a_file": tmp_path / "a_file" / "figures"}.get(where, where)
    code = explain.main(["--image", images[0], "--model", str(model_path), "--output-dir", str(path)])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith(message.format(path=path)) and error.count("\n") == 1, error


def test_a_model_the_pipeline_cannot_feed_fails_before_any_figure(saved, tmp_path, capsys):
    _, images = saved
    inputs = keras.Input((32, 40, 3))
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
    keras.Model(inputs, logits, name="wide").save(tmp_path / "wide.keras")
    code = explain.main(["--image", images[0], "--model", str(tmp_path / "wide.keras"),
                         "--output-dir", str(tmp_path / "figures")])
    error = capsys.readouterr().err
    assert code == 2 and error == ("error: model 'wide' takes images of shape (32, 40, 3); explain.py "
                                   "needs a fixed square input, as train.py builds\n")
    assert not list((tmp_path / "figures").glob("*.png"))


def test_missing_files_return_2(tmp_path, capsys, saved):
    model_path, images = saved
    assert explain.main(["--image", str(tmp_path / "none.jpg"), "--model", str(model_path)]) == 2
    assert capsys.readouterr().err.startswith("error: image file not found")
    assert explain.main(["--image", images[0], "--model", str(tmp_path / "none.keras")]) == 2
    assert capsys.readouterr().err.startswith("error: model file not found")


def test_a_decompression_bomb_is_refused_from_its_header_and_a_large_original_is_shrunk(saved, tmp_path):
    """In a subprocess under an address-space limit: without the header check the
    38-byte WebP alone decodes to 800 MB and the PNG to 1.2 GB, and their figures to more."""
    import os
    import pathlib

    import image_bombs

    model_path, images = saved
    bombs = {"canvas.webp": image_bombs.lossless_webp(16383, 16383), "zeros.png": image_bombs.blank_png(20000, 20000)}
    for name, data in bombs.items():
        (tmp_path / name).write_bytes(data)
    large = tmp_path / "large.png"  # legal (12 megapixels): explained, its original shrunk for the figures
    tf.io.write_file(str(large), tf.io.encode_png(np.zeros((3000, 4000, 3), np.uint8)))
    assert read_image(large, 32).original.shape[:2] == (450, 600)
    repo = str(pathlib.Path(__file__).resolve().parent.parent)
    for name in bombs:
        result = image_bombs.run_limited(
            [f"{repo}/explain.py", "--model", str(model_path), "--image", str(tmp_path / name),
             "--output-dir", str(tmp_path / "out")],
            env={**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / name}: too large ("), \
            result.stderr[-2000:]
