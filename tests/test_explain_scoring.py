"""Explanation scores, the randomisation sanity check and figures, on known answers."""

import keras
import numpy as np
import pytest
from keras import layers

from keras_caltech.errors import UserError
from keras_caltech.explain import (GradCam, centre_point_baseline, deletion_curve,
                                   energy_in_box, explanation_figure, faithfulness,
                                   feature_map_figure, feature_maps, grid_pointing_game,
                                   insertion_curve, make_mosaic, overlay, patches_figure,
                                   pointing_game, prediction_title, save_figure,
                                   spearman_correlation, top_activating_patches)
from keras_caltech.explain.sanity import cascading_randomization, weighted_layer_paths

SIZE = 32


def colour_model():
    """Four classes, each the mean ReLU'd evidence of one colour: red, green, blue, yellow."""
    inputs = keras.Input((SIZE, SIZE, 3))
    detectors = layers.Conv2D(4, 1, activation="relu", name="colours")
    x = layers.GlobalAveragePooling2D()(detectors(inputs))
    logits = layers.Dense(4, name="logits")
    model = keras.Model(inputs, logits(x), name="colours")
    kernel = np.array([[1, -1, -1, 1], [-1, 1, -1, 1], [-1, -1, 1, -2]], np.float32)  # rgb x class
    detectors.set_weights([kernel[None, None], np.array([-100, -100, -100, -400], np.float32)])
    logits.set_weights([np.eye(4, dtype=np.float32), np.zeros(4, np.float32)])
    return model


COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.float32)


def colour_patch(colour_index, row=10, col=12, side=8):
    """A black image with one square of a class colour."""
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    image[row:row + side, col:col + side] = COLOURS[colour_index]
    return image


@pytest.fixture(scope="module")
def model():
    return colour_model()


# --- Localisation --------------------------------------------------------------------

def test_pointing_game_hits_in_the_box_and_within_the_tolerance_only():
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[6, 1] = 1.0  # cell centre at pixel (x=6, y=26) of a 32 px image, after resizing
    assert pointing_game(heatmap, [0, 20, 12, 31], image_size=(32, 32), tolerance=0)
    assert not pointing_game(heatmap, [10, 0, 31, 12], image_size=(32, 32), tolerance=0)
    assert pointing_game(heatmap, [10, 22, 31, 31], image_size=(32, 32), tolerance=5)
    assert not pointing_game(heatmap, [10, 22, 31, 31], image_size=(32, 32), tolerance=2)
    assert not pointing_game(np.zeros((8, 8)), [0, 0, 31, 31], image_size=(32, 32))


def test_energy_in_box_is_the_share_of_mass_inside():
    heatmap = np.zeros((10, 10), np.float32)
    heatmap[2, 2], heatmap[7, 7] = 3.0, 1.0
    assert energy_in_box(heatmap, [0, 0, 4, 4]) == pytest.approx(0.75)
    assert energy_in_box(heatmap, [5, 5, 9, 9]) == pytest.approx(0.25)
    assert energy_in_box(np.zeros((10, 10)), [0, 0, 9, 9]) == 0.0
    with pytest.raises(UserError, match="x0 <= x1"):
        energy_in_box(heatmap, [5, 0, 1, 9])


def test_centre_point_baseline_hits_boxes_over_the_centre():
    assert centre_point_baseline([10, 10, 20, 20], (32, 32), tolerance=0)
    assert not centre_point_baseline([0, 0, 8, 8], (32, 32), tolerance=0)


def test_grid_pointing_game_finds_each_colour_in_its_own_tile(model):
    images = np.stack([colour_patch(index) for index in range(4)])
    mosaic = make_mosaic(images)
    assert mosaic.shape == (SIZE, SIZE, 3)
    assert (mosaic[5:9, 6:10] == COLOURS[0]).all() and (mosaic[21:25, 22:26] == COLOURS[3]).all()
    explainer = GradCam(model, "colours")
    assert grid_pointing_game(explainer, images, [0, 1, 2, 3]).all()
    # Told the wrong classes (tiles 0 and 1 swapped), the maps peak in the other tile.
    assert grid_pointing_game(explainer, images[[1, 0, 2, 3]], [0, 1, 2, 3]).tolist() == [
        False, False, True, True]
    with pytest.raises(UserError, match="4 different classes"):
        grid_pointing_game(explainer, images, [0, 0, 2, 3])


# --- Faithfulness --------------------------------------------------------------------

def test_deleting_the_explained_pixels_first_drops_the_class_faster_than_random(model):
    image = colour_patch(0, row=4, col=18)
    heatmap = GradCam(model, "colours")(image[None], 0).heatmaps[0]
    deletion = deletion_curve(model, image, heatmap, 0, steps=16)
    insertion = insertion_curve(model, image, heatmap, 0, steps=16)
    assert deletion.fractions[0] == 0 and deletion.fractions[-1] == 1 and len(deletion.fractions) == 17
    assert deletion.probabilities[0] > 0.5 and deletion.probabilities[-1] < deletion.probabilities[0]
    scores = faithfulness(model, image, heatmap, 0, steps=16)
    assert scores.deletion == pytest.approx(deletion.auc)
    assert scores.insertion == pytest.approx(insertion.auc)
    assert scores.deletion < scores.random_deletion
    assert scores.insertion > scores.random_insertion


# --- Sanity check --------------------------------------------------------------------

def test_spearman_correlation_ranks_with_averaged_ties():
    assert spearman_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [0, 1.5, 1.5, 3] against [0, 1, 2, 3]: covariance 1.125, variances 1.125 and 1.25
    expected = 1.125 / np.sqrt(1.125 * 1.25)
    assert spearman_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(expected)
    assert spearman_correlation(np.zeros(4), np.arange(4)) == 0.0
    assert spearman_correlation(np.zeros(4), np.zeros(4)) == 1.0


def test_cascading_randomization_uses_a_fresh_explainer_per_copy_and_spares_the_model():
    keras.utils.set_random_seed(7)
    backbone_input = keras.Input((16, 16, 3))
    backbone = keras.Model(backbone_input, layers.Conv2D(6, 3, padding="same", activation="relu",
                                                         name="conv1")(backbone_input), name="backbone")
    backbone.trainable = False  # a frozen pretrained backbone still holds learned weights
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(backbone(inputs))
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))
    weights = [w.copy() for w in model.get_weights()]
    images = np.random.default_rng(7).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    explained = []

    def make_explainer(copy):
        explained.append(copy)
        return GradCam(copy, "conv2")

    steps = cascading_randomization(model, images, [0, 1], make_explainer, seed=1)
    assert [step.layer_name for step in steps] == ["logits", "conv2", "backbone/conv1"]
    assert weighted_layer_paths(model) == ["logits", "conv2", "backbone/conv1"]
    assert not backbone.trainable
    assert len({id(copy) for copy in explained}) == 4 and explained[0] is model
    for step in steps:
        assert step.correlations.shape == (2,) and np.all(np.abs(step.correlations) <= 1)
    assert steps[-1].correlations.mean() < 0.9  # fully random weights: a different map
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


# --- Figures -------------------------------------------------------------------------

def test_overlay_colours_hot_red_and_cold_blue_on_the_original_image():
    black = np.zeros((8, 8, 3), np.float32)
    hot = overlay(black, np.ones((4, 4)), alpha=1.0)
    cold = overlay(black, np.zeros((4, 4)), alpha=1.0)
    assert hot.dtype == np.uint8 and hot.shape == (8, 8, 3)
    assert hot[0, 0].argmax() == 0 and cold[0, 0].argmax() == 2  # RGB, not OpenCV's BGR
    grey = overlay(np.full((8, 8, 3), 200.0), np.zeros((4, 4)), alpha=0.0)
    assert (grey == 200).all()


def test_figures_are_written_as_png(tmp_path, model):
    image = colour_patch(2)
    result = GradCam(model, "colours")(image[None], 2)
    title = prediction_title(result.probabilities[0], 2, ["red", "green", "blue", "yellow"])
    assert title.startswith("predicted blue (")
    paths = [
        save_figure(explanation_figure(image, result.heatmaps[0], title), tmp_path / "cam.png"),
        save_figure(feature_map_figure(feature_maps(model, image)["colours"], "colours"),
                    tmp_path / "maps" / "colours.png"),
        save_figure(patches_figure(top_activating_patches(model, image[None], class_index=2),
                                   "blue"), tmp_path / "patches.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:4] == b"\x89PNG"
