"""Every registered model keeps the contract, has its published size, and transfers.

The contract test is parametrised over ``list_models()``, so a new architecture is
tested for free. Models are built at their declared minimum size to keep this file
fast on a CPU; pretrained backbones use ``weights=None`` (no download) or a weights file
the test writes itself.

Run: python -m pytest tests/test_models.py
"""

import keras
import numpy as np
import pytest

from keras_caltech.errors import UserError
from keras_caltech.models import create_model, get_model_entry, list_models
from keras_caltech.models.layers import AdaptiveAveragePooling2D, ImageNormalization
from keras_caltech.models.transfer import (backbone_blocks, freeze_backbone, is_head_layer,
                                           load_weights_from, unfreeze_top_blocks)

NUM_CLASSES = 3

# TensorFlow's tensors predate NumPy 2's copy keyword; Keras's get_weights() warns on each.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def random_images(size, count=2, seed=0):
    """0-255 RGB float32 images (count, size, size, 3), what every model takes."""
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def build_unchecked(name, image_size, num_classes=NUM_CLASSES):
    """Builds a registered architecture the way create_model does, without its size check."""
    entry = get_model_entry(name)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = ImageNormalization(mean=(0.0,) * 3, std=(1.0,) * 3, name="normalize")(inputs)
    options = {"weights": None} if entry.pretrained else {}
    return keras.Model(inputs, entry.build(x, num_classes, **options), name=name)


def degenerate_downsampling(model):
    """Names of layers that no longer downsample: a strided layer given a 1-pixel map, or
    an adaptive pool asked for more cells than its input has."""
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.AdaptiveAveragePooling2D):
            height, width = layer.input.shape[1:3]
            if height < layer.output_size[0] or width < layer.output_size[1]:
                names.append(layer.name)
        elif max(getattr(layer, "strides", None) or (1,)) > 1:
            if min(layer.input.shape[1:3]) < 2:
                names.append(layer.name)
    return names


def downsampling_layers(model):
    """How many layers of ``model`` have a stride above 1."""
    return sum(max(getattr(layer, "strides", None) or (1,)) > 1 for layer in model.layers)


def perturb(model, seed=0):
    """Scales every weight by a random factor in [0.5, 1.5] (BatchNorm variances stay > 0)."""
    rng = np.random.default_rng(seed)
    model.set_weights([weight * rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype)
                       for weight in model.get_weights()])


def weights_by_layer(model):
    """A copy of every layer's weights, by layer name."""
    return {layer.name: [np.copy(weight) for weight in layer.get_weights()]
            for layer in model.layers if layer.weights}


def changed_layers(before, model):
    """Names of the layers whose weights differ from ``before``, sorted."""
    return sorted(name for name, weights in before.items()
                  if any(not np.array_equal(old, new)
                         for old, new in zip(weights, model.get_layer(name).get_weights())))


def fit_two_steps(model, image_size):
    """Compiles and fits ``model`` for two SGD steps on random images and labels."""
    # Eager: two steps do not repay tracing a graph, and trainable flags act the same.
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    labels = np.arange(8) % NUM_CLASSES
    model.fit(random_images(image_size, count=8, seed=1), labels, batch_size=4, epochs=1,
              verbose=0)


# --- The contract, for every registered model --------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_model_keeps_the_contract_and_reloads_with_identical_outputs(name, tmp_path):
    entry = get_model_entry(name)
    size = entry.min_image_size
    model = create_model(name, NUM_CLASSES, size)
    images = random_images(size)

    logits = np.asarray(model(images, training=False))
    assert logits.shape == (2, NUM_CLASSES)
    assert np.all(np.isfinite(logits))

    assert model.name == name
    assert [tensor.name for tensor in model.inputs] == ["image"]
    assert isinstance(model.layers[1], ImageNormalization) and model.layers[1].name == "normalize"
    logits_layer = model.get_layer("logits")
    assert isinstance(logits_layer, keras.layers.Dense)
    assert logits_layer.activation is keras.activations.linear
    assert model.outputs[0] is logits_layer.output
    assert len(model.get_layer(entry.gradcam_layer).output.shape) == 4
    # Flat (a backbone built on our tensor, not nested) and reloadable in safe mode.
    assert not any(isinstance(layer, (keras.Model, keras.layers.Lambda)) for layer in model.layers)
    assert degenerate_downsampling(model) == []  # the declared minimum still downsamples

    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(reloaded(images, training=False)), logits)


@pytest.mark.parametrize("side, cells, data_format", [
    (28, 4, "channels_last"),  # MyCNN at 224 px: one 7x7 average pool
    (14, 7, "channels_first"),
    (30, 4, "channels_last"),  # uneven windows: Keras' own computation
])
def test_adaptive_pooling_equals_keras_layer_in_values_and_gradients(side, cells, data_format):
    import tensorflow as tf

    shape = (2, side, side, 3) if data_format == "channels_last" else (2, 3, side, side)
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    results = []
    for layer in (keras.layers.AdaptiveAveragePooling2D(cells, data_format=data_format),
                  AdaptiveAveragePooling2D(cells, data_format=data_format)):
        with tf.GradientTape() as tape:
            tape.watch(images)
            pooled = layer(images)
            score = tf.reduce_sum(pooled * tf.reshape(tf.sin(tf.range(tf.size(pooled), dtype=tf.float32)),
                                                      pooled.shape))
        results.append((pooled.numpy(), tape.gradient(score, images).numpy()))
    (expected, expected_gradient), (ours, gradient) = results
    ops = {op.type for op in tf.function(AdaptiveAveragePooling2D(cells, data_format=data_format)).get_concrete_function(
        tf.TensorSpec(shape, tf.float32)).graph.get_operations()}
    assert ("AvgPool" in ops and "GatherV2" not in ops) == (side % cells == 0), ops  # one pool where it divides
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    np.testing.assert_allclose(gradient, expected_gradient, atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_below_its_minimum_size_a_model_stops_downsampling_and_create_model_refuses(name):
    entry = get_model_entry(name)
    below = entry.min_image_size - 1
    try:
        model = build_unchecked(name, below)
    except ValueError:  # a "valid" pooling window larger than its input
        pass
    else:  # a layer downsamples a 1-pixel map, or (CompactResNet) a pool is left out
        assert degenerate_downsampling(model) != [] or \
            downsampling_layers(model) < downsampling_layers(build_unchecked(name, entry.min_image_size))
    with pytest.raises(UserError, match=f"at least {entry.min_image_size} px"):
        create_model(name, NUM_CLASSES, below)


def test_unknown_names_and_weights_for_scratch_models_are_refused_with_the_valid_choices():
    with pytest.raises(UserError, match="Did you mean resnet18"):
        create_model("resnet19", NUM_CLASSES, 32)
    with pytest.raises(UserError, match="trained from scratch.*vgg19_imagenet"):
        create_model("resnet18", NUM_CLASSES, 32, weights="imagenet")


# --- Published sizes ----------------------------------------------------------------

# Seed report 003's Keras summaries at 224 px, 5 classes: (layer, output shape, parameters).
SMALL_CNN_TABLES = {
    "small_cnn_4": [("conv1", (56, 56, 8), 2912), ("pool1", (27, 27, 8), 0),
                    ("conv2", (27, 27, 16), 3216), ("pool2", (13, 13, 16), 0),
                    ("flatten", (2704,), 0), ("fc1", (128,), 346240), ("logits", (5,), 645)],
    "small_cnn_5": [("conv1", (56, 56, 8), 2912), ("pool1", (27, 27, 8), 0),
                    ("conv2", (27, 27, 16), 3216), ("pool2", (13, 13, 16), 0),
                    ("conv3", (13, 13, 32), 4640), ("pool3", (6, 6, 32), 0),
                    ("flatten", (1152,), 0), ("fc1", (128,), 147584), ("logits", (5,), 645)],
    # The report prints (13, 13, 64) for pool4, a typo: its Flatten (2304) and Dense
    # parameters (295,040) both need 6 x 6 x 64.
    "small_cnn_6": [("conv1", (56, 56, 8), 2912), ("pool1", (27, 27, 8), 0),
                    ("conv2", (27, 27, 16), 3216), ("pool2", (13, 13, 16), 0),
                    ("conv3", (13, 13, 32), 4640), ("conv4", (13, 13, 64), 18496),
                    ("pool4", (6, 6, 64), 0), ("flatten", (2304,), 0),
                    ("fc1", (128,), 295040), ("logits", (5,), 645)],
}


@pytest.mark.parametrize("name", sorted(SMALL_CNN_TABLES))
def test_small_cnns_match_the_published_layer_tables_exactly(name):
    model = create_model(name, 5, 224)
    for layer_name, shape, parameters in SMALL_CNN_TABLES[name]:
        layer = model.get_layer(layer_name)
        assert (layer_name, tuple(layer.output.shape[1:])) == (layer_name, shape)
        assert (layer_name, layer.count_params()) == (layer_name, parameters)
    assert model.count_params() == sum(row[2] for row in SMALL_CNN_TABLES[name])


def trainable_parameters(model):
    """Parameters as PyTorch counts them (the reports' framework): BatchNorm's moving
    statistics are buffers there, not parameters."""
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


@pytest.mark.parametrize("name, published", [("xception_small", 1.9e6),
                                             ("xception_medium", 5.9e6)])
def test_xceptions_are_within_one_percent_of_their_published_size(name, published):
    # Seed report 001 trained them on 256 classes (clutter removed).
    model = create_model(name, 256, get_model_entry(name).min_image_size)
    assert abs(trainable_parameters(model) - published) <= 0.01 * published


@pytest.mark.parametrize("name, published", [("resnet18", 11_689_512),
                                             ("resnet50", 25_557_032)])
def test_resnets_have_exactly_torchvisions_parameter_count_at_1000_classes(name, published):
    model = create_model(name, 1000, get_model_entry(name).min_image_size)
    assert trainable_parameters(model) == published


def test_vgg5_halves_224_px_five_times_to_7x7_as_reported():
    model = create_model("vgg5", NUM_CLASSES, 224)
    shapes = [tuple(model.get_layer(f"block{block}_pool").output.shape[1:])
              for block in range(1, 6)]
    assert shapes == [(112, 112, 64), (56, 56, 128), (28, 28, 256), (14, 14, 512), (7, 7, 512)]
    assert [model.get_layer(name).units for name in ("fc1", "fc2")] == [4096, 1024]


# --- Pretrained backbones ------------------------------------------------------------

KERAS_APPLICATIONS = {
    "efficientnetv2b0_imagenet": (keras.applications.EfficientNetV2B0,
                                  keras.applications.efficientnet_v2.preprocess_input),
    "resnet50_imagenet": (keras.applications.ResNet50,
                          keras.applications.resnet50.preprocess_input),
    "vgg19_imagenet": (keras.applications.VGG19, keras.applications.vgg19.preprocess_input),
    "xception_imagenet": (keras.applications.Xception,
                          keras.applications.xception.preprocess_input),
}


def test_every_pretrained_model_is_checked_against_its_keras_application():
    pretrained = sorted(name for name in list_models() if get_model_entry(name).pretrained)
    assert pretrained == sorted(KERAS_APPLICATIONS)


@pytest.mark.parametrize("name", sorted(KERAS_APPLICATIONS))
def test_our_normalization_and_backbone_equal_keras_preprocess_input_and_backbone(name):
    application, preprocess_input = KERAS_APPLICATIONS[name]
    size = 71 if name == "xception_imagenet" else 32  # Keras refuses a smaller Xception input
    model = create_model(name, NUM_CLASSES, size)
    features = keras.Model(model.input, model.get_layer("head_pool").input)
    reference = application(include_top=False, weights=None, input_shape=(size, size, 3))
    ours = [layer for layer in model.layers if layer.weights and not is_head_layer(layer)]
    theirs = [layer for layer in reference.layers if layer.weights]
    assert [type(layer) for layer in ours] == [type(layer) for layer in theirs]
    for our_layer, their_layer in zip(ours, theirs):
        their_layer.set_weights(our_layer.get_weights())

    images = random_images(size)
    expected = np.asarray(reference(preprocess_input(images.copy()), training=False))
    actual = np.asarray(features(images, training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_backbone_weights_file_saved_by_keras_loads_into_the_pretrained_model(tmp_path):
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    perturb(backbone)  # so that loading cannot pass by chance of equal initializations
    path = tmp_path / "resnet50_backbone.weights.h5"
    backbone.save_weights(path)

    model = create_model("resnet50_imagenet", NUM_CLASSES, 32, weights=str(path))
    for layer in filter(lambda layer: layer.weights, backbone.layers):
        for saved, loaded in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(loaded, saved)


def test_a_missing_or_foreign_weights_file_is_refused_naming_its_path(tmp_path):
    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(UserError, match="missing.weights.h5.*does not exist"):
        create_model("vgg19_imagenet", NUM_CLASSES, 32, weights=str(missing))
    foreign = tmp_path / "dense.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(foreign)
    with pytest.raises(UserError, match="dense.weights.h5.*does not fit the VGG19 backbone"):
        create_model("vgg19_imagenet", NUM_CLASSES, 32, weights=str(foreign))
    with pytest.raises(UserError, match="Received: weights=3"):
        create_model("vgg19_imagenet", NUM_CLASSES, 32, weights=3)


# --- Transfer learning ---------------------------------------------------------------


def test_a_frozen_backbone_stays_put_and_unfreezing_the_top_block_trains_it_without_batchnorm():
    model = create_model("resnet50_imagenet", NUM_CLASSES, 17)
    freeze_backbone(model)
    before = weights_by_layer(model)
    fit_two_steps(model, 17)
    # Frozen BatchNorm runs in inference mode: even its moving statistics stay put.
    assert changed_layers(before, model) == ["logits"]

    assert unfreeze_top_blocks(model, 1) == ["conv5_block3"]
    before = weights_by_layer(model)
    fit_two_steps(model, 17)
    assert changed_layers(before, model) == [
        "conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv", "logits"]


def test_xception_blocks_include_the_shortcut_layers_keras_leaves_unnamed():
    model = create_model("xception_imagenet", NUM_CLASSES, 23)
    model.get_layer("block14_sepconv2_act")  # every backbone layer is reachable by name
    blocks = backbone_blocks(model)
    assert list(blocks) == [f"block{number}" for number in range(1, 15)]
    shortcut = [layer for layer in blocks["block13"] if type(layer) is keras.layers.Conv2D]
    assert len(shortcut) == 1 and not shortcut[0].name.startswith("block")  # e.g. conv2d_3

    assert unfreeze_top_blocks(model, 2) == ["block13", "block14"]
    trainable = sorted(layer.name for layer in model.layers if layer.trainable and layer.weights)
    expected = sorted([layer.name for block in ("block13", "block14") for layer in blocks[block]
                       if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
                      + ["logits"])
    assert trainable == expected
    assert shortcut[0].name in trainable


def test_unfreezing_a_model_without_blocks_or_beyond_its_blocks_is_refused():
    with pytest.raises(UserError, match="no block structure.*resnet18"):
        unfreeze_top_blocks(create_model("mycnn", NUM_CLASSES, 32), 1)
    resnet = create_model("resnet18", NUM_CLASSES, 17)
    assert len(backbone_blocks(resnet)) == 9  # the stem and 8 basic blocks
    with pytest.raises(UserError, match="num_blocks=10; valid: 0 to 9"):
        unfreeze_top_blocks(resnet, 10)


def test_loading_weights_from_a_run_with_other_classes_copies_everything_but_the_logits():
    source = create_model("resnet18", 5, 17)
    perturb(source)
    model = create_model("resnet18", NUM_CLASSES, 17)
    fresh_logits = model.get_layer("logits").get_weights()

    assert load_weights_from(model, source) == ["logits"]
    for layer in model.layers:
        if layer.weights and layer.name != "logits":
            theirs = source.get_layer(layer.name).get_weights()
            for our_weight, their_weight in zip(layer.get_weights(), theirs):
                np.testing.assert_array_equal(our_weight, their_weight)
    for ours, fresh in zip(model.get_layer("logits").get_weights(), fresh_logits):
        np.testing.assert_array_equal(ours, fresh)


def test_loading_weights_pairs_xceptions_unnamed_layers_whose_names_differ_between_builds():
    source = create_model("xception_imagenet", NUM_CLASSES, 23)
    perturb(source)
    model = create_model("xception_imagenet", NUM_CLASSES, 23)
    assert {layer.name for layer in source.layers} != {layer.name for layer in model.layers}

    assert load_weights_from(model, source) == []
    images = random_images(23)
    np.testing.assert_array_equal(np.asarray(model(images, training=False)),
                                  np.asarray(source(images, training=False)))


def test_loading_weights_from_another_architecture_is_refused_and_changes_nothing():
    model = create_model("resnet18", NUM_CLASSES, 17)
    before = weights_by_layer(model)
    with pytest.raises(UserError, match="resnet26.*resnet18.*Only the number of classes"):
        load_weights_from(model, create_model("resnet26", NUM_CLASSES, 17))
    with pytest.raises(UserError, match="different architectures"):
        load_weights_from(model, create_model("mycnn", NUM_CLASSES, 32))
    assert changed_layers(before, model) == []
