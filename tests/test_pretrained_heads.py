"""The heads of a pretrained backbone: VGG19 with its own ImageNet classifier kept (``model.head=top``).

Seed report 003 retrained "its classification layer" of an ImageNet VGG19. With
``head="top"`` the model keeps VGG19's fc1 and fc2 (4096 units each, pretrained) and
replaces the 1000-way output layer with a new one. One such model (139.6M parameters,
about 0.6 GB) is built for this whole file, from a weights file the test writes itself
from ``keras.applications.VGG19(include_top=True, weights=None)``: no download.

Run: python -m pytest tests/test_pretrained_heads.py
"""

import pathlib

import keras
import numpy as np
import pytest

import train
from keras_caltech.config import load_config
from keras_caltech.errors import UserError
from keras_caltech.explain import GradCam
from keras_caltech.models import create_model
from keras_caltech.models.loading import load_model_safely
from keras_caltech.training import phases

NUM_CLASSES = 5
SIZE = 224
VGG19_PARAMETERS = 143_667_240  # keras.applications.VGG19(include_top=True): 1000 classes
PREDICTIONS_PARAMETERS = 4096 * 1000 + 1000  # the 1000-way layer the new one replaces
NEW_LAYER_PARAMETERS = 4096 * NUM_CLASSES + NUM_CLASSES
FC_PARAMETERS = (7 * 7 * 512 * 4096 + 4096) + (4096 * 4096 + 4096)  # fc1 + fc2
CHECKED_LAYERS = ("block1_conv1", "block5_conv4", "fc1", "fc2")
REPO = pathlib.Path(__file__).resolve().parent.parent
VGG19_CONFIG = "configs/caltech101/vgg19_imagenet_head_five_classes.yaml"

# TensorFlow's tensors predate NumPy 2's copy keyword; Keras's get_weights() warns on each.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def whole_vgg19_file(tmp_path_factory):
    """A whole VGG19's weights file (include_top=True) and the weights of CHECKED_LAYERS in it.

    Kernels are drawn afresh by every build; the biases, zero when built, are set to
    random values, so no loaded layer can equal the file's by chance.
    """
    reference = keras.applications.VGG19(include_top=True, weights=None)
    rng = np.random.default_rng(0)
    for name in CHECKED_LAYERS:
        kernel, bias = reference.get_layer(name).get_weights()
        reference.get_layer(name).set_weights([kernel, rng.normal(size=bias.shape).astype(bias.dtype)])
    path = tmp_path_factory.mktemp("weights") / "vgg19_whole.weights.h5"
    reference.save_weights(path)
    return path, {name: reference.get_layer(name).get_weights() for name in CHECKED_LAYERS}


@pytest.fixture(scope="module")
def top_model(whole_vgg19_file):
    path, _ = whole_vgg19_file
    return create_model("vgg19_imagenet", NUM_CLASSES, SIZE, weights=str(path), head="top")


def images(count=2, seed=0):
    """0-255 RGB float32 images (count, 224, 224, 3)."""
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


# --- What is built -----------------------------------------------------------------------


def test_the_top_head_keeps_fc1_and_fc2_and_replaces_the_1000_way_layer_with_a_new_one(top_model):
    names = [layer.name for layer in top_model.layers]
    assert names[-6:] == ["block5_pool", "flatten", "fc1", "fc2", "head_dropout", "logits"]
    assert "predictions" not in names
    assert top_model.get_layer("flatten").output.shape[1:] == (7 * 7 * 512,)
    assert [top_model.get_layer(name).units for name in ("fc1", "fc2", "logits")] == [4096, 4096, NUM_CLASSES]
    assert top_model.get_layer("fc2").activation is keras.activations.relu
    assert top_model.get_layer("logits").activation is keras.activations.linear  # logits, as every model
    assert top_model.count_params() == VGG19_PARAMETERS - PREDICTIONS_PARAMETERS + NEW_LAYER_PARAMETERS
    assert top_model.count_params() == 139_590_725


def test_a_whole_vgg19_weights_file_loads_into_the_convolutions_fc1_and_fc2(top_model, whole_vgg19_file):
    _, saved = whole_vgg19_file
    for name in CHECKED_LAYERS:
        for loaded, expected in zip(top_model.get_layer(name).get_weights(), saved[name]):
            np.testing.assert_array_equal(loaded, expected, err_msg=name)


def test_phase_one_trains_the_new_layer_alone_and_fine_tuning_one_block_adds_fc1_and_fc2(
        top_model, whole_vgg19_file):
    # The real phase logic, with the test's model as the one the trainer builds.
    path, _ = whole_vgg19_file
    config = load_config(None, ["model.name=vgg19_imagenet", "model.head=top", f"model.weights={path}",
                                "train.epochs=1", "model.fine_tune_blocks=1", "train.fine_tune_epochs=1"])
    log = []
    runner = phases.PhaseRunner(config, lambda config, weights: top_model, NUM_CLASSES,
                                steps_per_epoch=1, log=log.append)
    head, fine_tune = runner.plan

    def trained(model):
        return [layer.name for layer in model.layers if layer.trainable and layer.weights]

    assert trained(runner.enter(head)) == ["logits"]  # the convolutions, fc1 and fc2 frozen
    assert f"{NEW_LAYER_PARAMETERS:,} of 139,590,725 parameters trainable" in log[-1]
    assert trained(runner.enter(fine_tune)) == ["fc1", "fc2", "logits"]  # fc1 and fc2 are the top block
    assert f"{FC_PARAMETERS + NEW_LAYER_PARAMETERS:,} of 139,590,725 parameters trainable" in log[-1]


def test_gradcam_explains_the_last_convolution_through_the_dense_layers(top_model):
    result = GradCam(top_model)(images(), [0, 1])
    assert result.heatmaps.shape == (2, 14, 14)  # block5_conv4, before the last pooling
    assert np.isfinite(result.heatmaps).all() and result.heatmaps.max() <= 1


def test_a_top_head_model_reloads_from_its_keras_file_with_identical_outputs(top_model, tmp_path):
    path = tmp_path / "vgg19_top.keras"
    top_model.save(path)
    reloaded = load_model_safely(path)
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in top_model.layers]
    np.testing.assert_array_equal(np.asarray(reloaded(images(), training=False)),
                                  np.asarray(top_model(images(), training=False)))


# --- What is refused ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["data.image_size=160"], "fc1 takes the 7 x 7 x 512 feature map of a 224 px image only. Received: "
                              "data.image_size=160. Set data.image_size=224, or model.head=pooled"),
    (["data.image_size=0"], "Received: data.image_size=0 (chosen from the data)"),
    (["train.epochs=20", "train.progressive_sizes=[128, 224]", "train.progressive_epochs=[10, 10]"],
     "model.head=top takes 224 px images only, so it cannot train at other sizes first"),
    (["model.head=flat"], "unknown model.head 'flat'. Valid heads: pooled, top"),
])
def test_a_top_head_at_another_size_is_refused_as_the_config_loads(overrides, message):
    with pytest.raises(UserError) as error:
        load_config(None, ["model.name=vgg19_imagenet", "model.head=top", *overrides])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_top_head_is_refused_for_other_models_and_sizes_naming_what_has_one():
    with pytest.raises(UserError, match="'xception_imagenet' has no choice of head.*models with one: "
                                        "vgg19_imagenet. Set model.head=pooled"):
        create_model("xception_imagenet", NUM_CLASSES, 71, head="top")
    with pytest.raises(UserError, match="224 px images only.*Received: image_size=160"):
        create_model("vgg19_imagenet", NUM_CLASSES, 160, head="top")


def test_a_backbone_only_file_is_refused_for_the_top_head_saying_which_file_fits(tmp_path):
    path = tmp_path / "vgg19_backbone.weights.h5"
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(UserError, match=r"does not fit the VGG19 with its ImageNet classifier: .* "
                                        r"Expected what keras.applications.VGG19\(include_top=True\)"):
        create_model("vgg19_imagenet", NUM_CLASSES, SIZE, weights=str(path), head="top")


def test_the_heads_the_config_offers_are_the_ones_the_model_builds():
    from keras_caltech import config_checks
    from keras_caltech.models import pretrained

    assert config_checks.HEADS == pretrained.HEADS
    assert config_checks.TOP_HEAD_IMAGE_SIZE == pretrained.VGG_TOP_IMAGE_SIZE


# --- Through train.py ------------------------------------------------------------------


def test_a_dry_run_of_report_003s_config_builds_the_top_head(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # nothing is written: no dataset is generated or downloaded
    assert train.main(["--config", VGG19_CONFIG, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "vgg19_imagenet: 139,590,725 parameters, 5 classes, 224 px input" in out
    assert " fc1 " in out and " fc2 " in out and "predictions" not in out


def test_a_dry_run_with_a_top_head_on_another_model_is_one_error_line(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert train.main(["--config", VGG19_CONFIG, "--set", "model.name=xception_imagenet", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model 'xception_imagenet' has no choice of head"), err
