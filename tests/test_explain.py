"""Known-answer tests of the explainers on tiny models (32 px or less, CPU, seconds).

Run: python -m pytest tests/test_explain*.py
"""

import keras
import numpy as np
import pytest
from keras import layers

from keras_caltech.errors import UserError
from keras_caltech.explain import (GradCam, GradCamPlusPlus, GuidedBackprop,
                                   GuidedChannelBackprop, GuidedGradCam, InputGradients, ScoreCam,
                                   class_evidence, default_layer_name, feature_maps, find_layer,
                                   guided_model, receptive_field, top_activating_patches, upsample)
from keras_caltech.models import create_model, get_model_entry, list_models

SIZE = 32


def dark_images(count, seed=0, size=SIZE):
    """Dark noisy RGB images, values 0-40."""
    return np.random.default_rng(seed).uniform(0, 40, (count, size, size, 3)).astype(np.float32)


def plant_patch(image, row, col, side=4):
    """A copy of ``image`` with a white square whose top-left corner is (row, col)."""
    image = image.copy()
    image[row:row + side, col:col + side] = 255.0
    return image


def bright_patch_model(size=SIZE):
    """A model whose class 0 logit counts bright 3x3 windows and class 1 argues against them.

    Conv (mean of the window minus 128, ReLU): positive only on bright spots ->
    MaxPool 2 -> GAP -> Dense with weights +1 (class 0) and -1 (class 1).
    """
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(1, 3, padding="same", activation="relu", name="bright")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    logits = layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, logits, name="bright_patch")
    model.get_layer("bright").set_weights([np.full((3, 3, 3, 1), 1 / 27, np.float32),
                                           np.array([-128.0], np.float32)])
    model.get_layer("logits").set_weights([np.array([[1.0, -1.0]], np.float32),
                                           np.zeros(2, np.float32)])
    return model


def small_cnn(seed, size=SIZE, classes=3):
    """Conv -> ReLU -> MaxPool -> Conv (ReLU, named "features") -> GAP -> Dense, random weights."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="small_cnn")


@pytest.fixture(scope="module")
def bright_model():
    return bright_patch_model()


@pytest.fixture(scope="module")
def patch_images():
    """Three images with a bright patch at different places, and the patch centres."""
    corners = [(4, 20), (22, 6), (14, 14)]
    images = np.stack([plant_patch(image, row, col)
                       for image, (row, col) in zip(dark_images(3), corners)])
    return images, [(row + 2, col + 2) for row, col in corners]


# --- Known answers -------------------------------------------------------------------

def test_gradcam_equals_cam_up_to_one_over_hw_for_conv_gap_dense():
    model = small_cnn(seed=1)
    images = dark_images(2, seed=1) * 6
    features = keras.Model(model.inputs[0], model.get_layer("features").output)(images).numpy()
    kernel = model.get_layer("logits").get_weights()[0]  # (channels, classes)
    result = GradCam(model, "features")(images, [0, 2])
    height, width = features.shape[1:3]
    for item, class_index in enumerate([0, 2]):
        cam = np.maximum(np.einsum("hwc,c->hw", features[item], kernel[:, class_index]), 0)
        assert cam.max() > 0
        np.testing.assert_allclose(result.raw[item] * height * width, cam, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("explainer", [GradCam, GradCamPlusPlus, ScoreCam])
def test_heatmap_peaks_on_the_planted_bright_patch(explainer, bright_model, patch_images):
    images, centres = patch_images
    result = explainer(bright_model)(images, 0)
    assert result.heatmaps.shape == (3, SIZE // 2, SIZE // 2)
    full = upsample(result.heatmaps, (SIZE, SIZE))
    for heatmap, (row, col) in zip(full, centres):
        peak_row, peak_col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        assert abs(peak_row - row) <= 3 and abs(peak_col - col) <= 3
    assert not result.empty.any()


def test_a_class_the_evidence_argues_against_gives_a_flagged_empty_map_without_nan(
        bright_model, patch_images):
    images, _ = patch_images
    for explainer in (GradCam, GradCamPlusPlus):
        result = explainer(bright_model)(images, [1, 0, 1])
        assert result.empty.tolist() == [True, False, True]
        assert np.isfinite(result.heatmaps).all() and np.isfinite(result.raw).all()
        assert (result.heatmaps[[0, 2]] == 0).all() and result.heatmaps[1].max() == 1.0


def test_batch_results_equal_one_image_at_a_time():
    model = small_cnn(seed=2)
    images = dark_images(4, seed=2) * 6
    explainer = GradCam(model, "features", batch_size=3)  # 2 chunks: 3 + 1 images
    batch = explainer(images, [0, 1, 2, 0])
    for item, class_index in enumerate([0, 1, 2, 0]):
        single = explainer(images[item:item + 1], class_index)
        np.testing.assert_allclose(single.raw[0], batch.raw[item], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(single.heatmaps[0], batch.heatmaps[item], atol=1e-5)
    assert explainer._maps.experimental_get_tracing_count() == 1  # one graph for every batch size


def test_no_class_given_explains_the_predicted_class():
    model = small_cnn(seed=3)
    images = dark_images(3, seed=3) * 6
    result = GradCam(model)(images)
    assert result.class_indices.tolist() == result.probabilities.argmax(-1).tolist()
    np.testing.assert_allclose(GradCam(model)(images, result.class_indices).raw, result.raw)


# --- Every kind of model -------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_gradcam_works_on_every_registered_model_with_its_declared_layer(name):
    entry = get_model_entry(name)
    model = create_model(name, num_classes=3, image_size=entry.min_image_size)
    explainer = GradCam(model)
    assert explainer.layer_name == entry.gradcam_layer
    result = explainer(dark_images(2, size=entry.min_image_size) * 6, [0, 1])
    assert np.isfinite(result.heatmaps).all()
    assert result.heatmaps.min() >= 0 and result.heatmaps.max() <= 1
    assert result.heatmaps.shape[1:] == tuple(find_layer(model, entry.gradcam_layer).output.shape[1:3])


def test_gradcam_of_a_keras_file_reloaded_from_disk_matches_the_original(tmp_path):
    model = create_model("mycnn", num_classes=3, image_size=SIZE)
    path = tmp_path / "mycnn.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    images = dark_images(2) * 6
    np.testing.assert_allclose(GradCam(reloaded)(images, [0, 1]).raw,
                               GradCam(model)(images, [0, 1]).raw, rtol=1e-4, atol=1e-7)


def nested_and_flat_twins():
    """The same layers (shared weights) as a backbone nested as a layer, and flat."""
    keras.utils.set_random_seed(4)
    conv1 = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv1")
    features = layers.Conv2D(6, 3, padding="same", name="features")
    relu = layers.ReLU(name="features_relu")
    gap, dense = layers.GlobalAveragePooling2D(), layers.Dense(3, name="logits")
    backbone_input = keras.Input((SIZE, SIZE, 3))
    backbone = keras.Model(backbone_input, relu(features(conv1(backbone_input))), name="backbone")
    inputs = keras.Input((SIZE, SIZE, 3))
    nested = keras.Model(inputs, dense(gap(backbone(inputs))), name="nested")
    inputs = keras.Input((SIZE, SIZE, 3))
    flat = keras.Model(inputs, dense(gap(relu(features(conv1(inputs))))), name="flat")
    return nested, flat


def test_gradcam_inside_a_nested_backbone_equals_the_same_layers_built_flat():
    nested, flat = nested_and_flat_twins()
    images = dark_images(3, seed=4) * 6
    for nested_name, flat_name in [("backbone/features", "features"),
                                   ("backbone/conv1", "conv1"), ("backbone", "features_relu")]:
        np.testing.assert_allclose(GradCam(nested, nested_name)(images, [0, 1, 2]).raw,
                                   GradCam(flat, flat_name)(images, [0, 1, 2]).raw,
                                   rtol=1e-4, atol=1e-7)
    assert default_layer_name(nested) == "backbone"
    assert receptive_field(nested, "backbone/features") == receptive_field(flat, "features")


def test_gradcam_reaches_inside_a_nested_keras_applications_backbone():
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(SIZE, SIZE, 3))
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(backbone(inputs)))
    model = keras.Model(inputs, outputs, name="transfer")
    result = GradCam(model, f"{backbone.name}/block_13_expand_relu")(dark_images(2) * 6, [0, 1])
    assert result.heatmaps.shape == (2, 2, 2) and np.isfinite(result.heatmaps).all()


def test_gradcam_on_a_sequential_model_built_by_a_call_takes_any_batch_size():
    keras.utils.set_random_seed(5)
    sequential = keras.Sequential([layers.Conv2D(4, 3, activation="relu", name="conv"),
                                   layers.GlobalAveragePooling2D(), layers.Dense(3)])
    sequential(dark_images(2))  # built by a call on a batch of 2: no Input layer
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for layer in sequential.layers:
        x = layer(x)
    functional = keras.Model(inputs, x)
    images = dark_images(3, seed=5) * 6
    np.testing.assert_allclose(GradCam(sequential)(images, [0, 1, 2]).raw,
                               GradCam(functional, "conv")(images, [0, 1, 2]).raw, rtol=1e-4, atol=1e-7)


# --- Loud failures -------------------------------------------------------------------

def test_a_missing_layer_fails_listing_the_4d_layers():
    model = create_model("mycnn", num_classes=3, image_size=SIZE)
    with pytest.raises(UserError,
                       match=r"no layer 'block4_rel'.*Did you mean block4_relu.*block4_pool"):
        GradCam(model, "block4_rel")
    nested, _ = nested_and_flat_twins()
    with pytest.raises(UserError, match=r"no layer 'backbone/feature'.*backbone/features"):
        GradCam(nested, "backbone/feature")


def test_a_layer_that_is_not_spatial_fails_listing_the_4d_layers():
    model = create_model("mycnn", num_classes=3, image_size=SIZE)
    with pytest.raises(UserError, match=r"'fc1'.*not spatial.*rank 2.*block4_relu"):
        GradCam(model, "fc1")


def test_mismatched_images_and_class_indices_fail(bright_model):
    explainer = GradCam(bright_model)
    with pytest.raises(UserError, match="Received 2 images and class_indices of shape"):
        explainer(dark_images(2), [0, 1, 0])
    with pytest.raises(UserError, match="out of range.*2 classes"):
        explainer(dark_images(2), [0, 2])
    with pytest.raises(UserError, match=r"add a batch axis"):
        explainer(dark_images(1)[0], 0)


def test_a_layer_no_gradient_reaches_fails_when_the_explainer_is_made():
    @keras.saving.register_keras_serializable(package="test_explain")
    class StopGradient(layers.Layer):
        def call(self, inputs):
            return keras.ops.stop_gradient(inputs)

    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(2, 3, name="frozen_out")(inputs)
    x = layers.GlobalAveragePooling2D()(StopGradient()(x))
    model = keras.Model(inputs, layers.Dense(2)(x))
    with pytest.raises(UserError, match="do not depend on layer 'frozen_out'"):
        GradCam(model, "frozen_out")


def test_an_unbuilt_sequential_model_fails_saying_how_to_build_it():
    sequential = keras.Sequential([layers.Conv2D(4, 3), layers.GlobalAveragePooling2D(),
                                   layers.Dense(3)])
    with pytest.raises(UserError, match="never built or called"):
        GradCam(sequential)


# --- Guided backpropagation ----------------------------------------------------------

def identity_mixing(shape, dtype=None):
    """Kernel initializer of a 1x1 Conv / Dense from 3 to 3 channels that copies its input."""
    return np.eye(3, dtype=np.float32).reshape(shape)


RELU_FORMS = {
    "conv_activation_argument": lambda: layers.Conv2D(3, 1, activation="relu", use_bias=False,
                                                      kernel_initializer=identity_mixing),
    "dense_activation_argument": lambda: layers.Dense(3, activation="relu", use_bias=False,
                                                      kernel_initializer=identity_mixing),
    "relu_layer": lambda: layers.ReLU(),
    "relu6_layer": lambda: layers.ReLU(6.0),
    "activation_layer": lambda: layers.Activation("relu"),
}


def relu_first_model(form, nesting):
    """Image -> one ReLU form (flat, or inside a nested Functional/Sequential) -> linear head.

    The ReLU form comes first so that the guided gradient at the image is the
    ReLU's gated gradient, which must be >= 0; the head's random linear conv makes the
    plain gradient negative in places.
    """
    keras.utils.set_random_seed(6)
    inputs = keras.Input((16, 16, 3))
    if nesting == "functional":
        inner_input = keras.Input((16, 16, 3))
        relu = keras.Model(inner_input, RELU_FORMS[form]()(inner_input), name="inner")
    elif nesting == "sequential":
        relu = keras.Sequential([keras.Input((16, 16, 3)), RELU_FORMS[form]()], name="inner")
    else:
        relu = RELU_FORMS[form]()
    x = layers.Conv2D(6, 3, padding="same", name="mix")(relu(inputs))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3)(x))


@pytest.mark.parametrize("form, nesting", [
    ("conv_activation_argument", "flat"), ("dense_activation_argument", "flat"),
    ("relu_layer", "flat"), ("relu6_layer", "flat"), ("activation_layer", "flat"),
    ("conv_activation_argument", "functional"), ("activation_layer", "sequential")])
def test_guided_backprop_gates_every_relu_form_and_leaves_the_model_unchanged(form, nesting):
    model = relu_first_model(form, nesting)
    images = np.random.default_rng(6).uniform(-100, 100, (2, 16, 16, 3)).astype(np.float32)
    before = model(images).numpy()
    guided = GuidedBackprop(model)(images, [0, 1])
    plain = InputGradients(model)(images, [0, 1])
    assert plain.min() < 0 and guided.min() >= 0  # gated: only positive gradients pass
    assert np.abs(guided).max() > 0 and not np.allclose(guided, plain)
    np.testing.assert_allclose(guided_model(model)(images), before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(images), before)  # still plain ReLUs: same plain gradient
    np.testing.assert_allclose(InputGradients(model)(images, [0, 1]), plain)


def test_guided_gradcam_is_guided_backprop_times_the_upsampled_cam(bright_model, patch_images):
    images, _ = patch_images
    product, cam = GuidedGradCam(bright_model)(images, 0)
    guided = GuidedBackprop(bright_model)(images, 0)
    np.testing.assert_allclose(product, guided * upsample(cam.heatmaps, (SIZE, SIZE))[..., None],
                               rtol=1e-5, atol=1e-8)
    assert product.shape == images.shape and np.abs(product).max() > 0


# --- Feature maps and top patches ----------------------------------------------------

def test_feature_maps_returns_every_conv_layer_for_one_image():
    model = create_model("mycnn", num_classes=3, image_size=SIZE)
    maps = feature_maps(model, dark_images(1)[0])
    assert list(maps) == ["block1_conv", "block2_conv", "block3_conv", "block4_conv"]
    assert [m.shape for m in maps.values()] == [(32, 32, 32), (16, 16, 64), (8, 8, 128), (4, 4, 256)]


def test_top_patches_of_a_channel_are_the_receptive_fields_on_the_planted_patches(
        bright_model, patch_images):
    images, centres = patch_images
    batches = [images[:2], (images[2:], np.zeros(1))]  # arrays and (images, labels) pairs
    patches = top_activating_patches(bright_model, batches, layer_name="pool", channel=0, top_k=3)
    assert sorted(patch.image_index for patch in patches) == [0, 1, 2]
    field = receptive_field(bright_model, "pool")
    assert field == (4, 2, 0.5)
    for patch in patches:
        x0, y0, x1, y1 = patch.box
        row, col = centres[patch.image_index]
        assert x0 <= col <= x1 and y0 <= row <= y1
        assert patch.pixels.shape == (y1 - y0, x1 - x0, 3) and patch.pixels.max() == 255
    scores = [patch.score for patch in patches]
    assert scores == sorted(scores, reverse=True)


def evidence_model(head="gap", size=SIZE):
    """Bright-spot detector -> MaxPool 2 -> 3x3 all-ones conv ("spread") -> head -> 2 logits.

    "spread" sums the bright spots of a 3x3 neighbourhood, so its units see an 8 px
    window (3 + 1 + 2 * 2) every 2 px and peak on a planted square; class 0 counts them
    (+1 per unit, bias 0.5), class 1 argues against them. With ``head="flatten"`` the
    Dense weights differ per position (random, seeded).
    """
    keras.utils.set_random_seed(8)
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(1, 3, padding="same", activation="relu", name="bright")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(1, 3, padding="same", use_bias=False, name="spread")(x)
    pooled = layers.GlobalAveragePooling2D() if head == "gap" else layers.Flatten()
    model = keras.Model(inputs, layers.Dense(2, name="logits")(pooled(x)), name=f"evidence_{head}")
    model.get_layer("bright").set_weights([np.full((3, 3, 3, 1), 1 / 27, np.float32),
                                           np.array([-128.0], np.float32)])
    model.get_layer("spread").set_weights([np.ones((3, 3, 1, 1), np.float32)])
    if head == "gap":
        model.get_layer("logits").set_weights([np.array([[1.0, -1.0]], np.float32),
                                               np.array([0.5, 0.0], np.float32)])
    return model


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_class_evidence_shares_sum_to_the_logit_less_the_bias_for_a_linear_head(head, patch_images):
    model = evidence_model(head)
    images, _ = patch_images
    logits, evidence = class_evidence(model, images, 0)
    assert evidence.shape == (3, SIZE // 2, SIZE // 2)
    np.testing.assert_allclose(logits, model(images).numpy()[:, 0], rtol=1e-5)
    bias = model.get_layer("logits").get_weights()[1][0]
    np.testing.assert_allclose(evidence.sum(axis=(1, 2)) + bias, logits, rtol=1e-4)
    if head == "gap":  # GAP -> Dense: the CAM over h * w, Grad-CAM's map before its ReLU
        np.testing.assert_allclose(np.maximum(evidence, 0), GradCam(model, "spread")(images, 0).raw,
                                   rtol=1e-4, atol=1e-6)


def test_top_patches_of_a_class_logit_crop_the_receptive_field_where_its_evidence_peaks(patch_images):
    model = evidence_model()
    images, centres = patch_images
    two_squares = plant_patch(images[2], 4, 4)  # a second square: a higher class-0 logit
    scanned = np.concatenate([dark_images(2, seed=9), images[:1], two_squares[None], images[1:2]])
    planted = {2: [centres[0]], 3: [centres[2], (6, 6)], 4: [centres[1]]}  # square centres
    patches = top_activating_patches(model, [scanned[:3], (scanned[3:], None)], class_index=0, top_k=3)
    assert patches[0].image_index == 3 and {patch.image_index for patch in patches[1:]} == {2, 4}
    logits, evidence = class_evidence(model, scanned, 0)
    assert [patch.score for patch in patches] == pytest.approx(logits[[3, *[p.image_index for p in patches[1:]]]])
    field = receptive_field(model, "spread")
    assert field.size == 8
    for patch in patches:
        x0, y0, x1, y1 = patch.box
        assert (x1 - x0, y1 - y0) == (field.size, field.size)  # the field, not the whole image
        # A planted square (centre - 2 to centre + 1) lies wholly inside the crop.
        assert any(x0 <= col - 2 and col + 2 <= x1 and y0 <= row - 2 and row + 2 <= y1
                   for row, col in planted[patch.image_index])
        assert patch.pixels.shape == (8, 8, 3) and (patch.pixels == 255).sum() >= 4 * 4 * 3
        assert patch.evidence == pytest.approx(evidence[patch.image_index].max()) and patch.evidence > 0
        assert evidence[patch.image_index][patch.position] == pytest.approx(patch.evidence)
    with pytest.raises(UserError, match="choose one unit"):
        top_activating_patches(model, images)


@pytest.mark.parametrize("name", list_models())
def test_class_patches_work_on_every_registered_model_at_its_declared_layer(name):
    entry = get_model_entry(name)
    model = create_model(name, num_classes=3, image_size=entry.min_image_size)
    images = dark_images(2, size=entry.min_image_size) * 6
    [patch] = top_activating_patches(model, images, class_index=1, top_k=1)
    field = receptive_field(model, entry.gradcam_layer)
    assert patch.box == field.box(*patch.position, images.shape[1:3])
    assert np.isfinite(patch.score) and np.isfinite(patch.evidence)


def test_class_evidence_fails_on_a_class_out_of_range_and_a_layer_off_the_logits_path(patch_images):
    model = evidence_model()
    images, _ = patch_images
    with pytest.raises(UserError, match=r"unit 2 is out of range: there are 2 \(classes 0 to 1\)"):
        class_evidence(model, images, 2)
    with pytest.raises(UserError, match=r"'logits'.*not spatial.*spread"):
        top_activating_patches(model, images, class_index=0, layer_name="logits")


# --- Guided backpropagation of one neuron ----------------------------------------------

def test_guided_backprop_of_a_channel_lives_in_its_strongest_units_receptive_field():
    model = small_cnn(seed=10)
    images = np.random.default_rng(10).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    result = GuidedChannelBackprop(model, "features", 2)(images)
    maps = keras.Model(model.inputs[0], model.get_layer("features").output)(images).numpy()[..., 2]
    field = receptive_field(model, "features")
    logit_gradients = GuidedBackprop(model)(images, 0)
    for item in range(3):
        row, col = result.positions[item]
        assert maps[item, row, col] == pytest.approx(maps[item].max())
        assert result.activations[item] == pytest.approx(maps[item].max()) and maps[item].max() > 0
        x0, y0, x1, y1 = field.box(row, col, (SIZE, SIZE))
        support = np.abs(result.gradients[item]).sum(axis=-1) > 0  # (h, w)
        assert support[y0:y1, x0:x1].any() and not _outside(support, (x0, y0, x1, y1)).any()
        # The class logit's guided gradient reaches outside that one field.
        assert _outside(np.abs(logit_gradients[item]).sum(axis=-1) > 0, (x0, y0, x1, y1)).any()


def _outside(mask, box):
    """``mask`` (h, w) with the box (x0, y0, x1, y1) cleared."""
    x0, y0, x1, y1 = box
    outside = mask.copy()
    outside[y0:y1, x0:x1] = False
    return outside


def test_guided_backprop_of_a_channel_refuses_a_channel_out_of_range_or_a_layer_that_is_not_4d():
    model = small_cnn(seed=10)
    with pytest.raises(UserError, match=r"channel 8 is out of range: layer 'features' has 8 channels \(0 to 7\)"):
        GuidedChannelBackprop(model, "features", 8)
    with pytest.raises(UserError, match=r"'logits'.*not spatial.*Layers with a 4-D output: .*features"):
        GuidedChannelBackprop(model, "logits", 0)
