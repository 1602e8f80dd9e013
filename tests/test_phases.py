"""Runs in phases, through the real trainer: pretrained transfer (frozen head, then fine-tuning
the top blocks), progressive resizing, and starting from another run (--init-from).

Pretrained models use a weights file the test saves itself, from a ``weights=None``
backbone at 32 px: no download. A spy callback (added through ``phases.callbacks_for``)
fingerprints every layer's weights when each phase's ``fit`` begins and ends.

Run: python -m pytest tests/test_phases.py
"""

import csv
import hashlib
import json

import keras
import numpy as np
import pytest

import train
from keras_caltech.config import load_config
from keras_caltech.errors import UserError
from keras_caltech.models.loading import load_model_safely
from keras_caltech.models.transfer import backbone_blocks
from keras_caltech.training import phases

TINY = ["--set", "model.name=mycnn", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "train.epochs=1", "--set", "data.cache_dir=", "--set", "train.tensorboard=false",
        "--set", "export.enabled=false"]

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def fingerprints(layers):
    """{layer name: digest of all its weights (trainable and not)} for layers with weights."""
    return {layer.name: hashlib.sha1(b"".join(np.ascontiguousarray(weight).tobytes()
                                              for weight in layer.get_weights())).hexdigest()
            for layer in layers if layer.weights}


def changed(before, after):
    return sorted(name for name in before if before[name] != after[name])


class PhaseSpy(keras.callbacks.Callback):
    """Records layer fingerprints at the start and end of one phase's fit."""

    def __init__(self, phase, records):
        super().__init__()
        self.phase, self.records = phase, records

    def on_train_begin(self, logs=None):
        self.records.append({"phase": self.phase, "model": self.model,
                             "begin": fingerprints(self.model.layers)})

    def on_train_end(self, logs=None):
        self.records[-1]["end"] = fingerprints(self.model.layers)


@pytest.fixture()
def phase_records(monkeypatch):
    """Adds a PhaseSpy to every phase the trainer runs; returns the list it fills."""
    records = []
    real_callbacks_for = phases.callbacks_for
    monkeypatch.setattr(phases, "callbacks_for",
                        lambda phase, callbacks: real_callbacks_for(phase, callbacks) + [PhaseSpy(phase, records)])
    return records


# --- Pretrained transfer: head on a frozen backbone, then the top blocks ---------------


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """An EfficientNetV2-B0 backbone's weights, perturbed so no fresh model matches them."""
    backbone = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                   include_preprocessing=True)
    rng = np.random.default_rng(0)
    backbone.set_weights([weight * rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype)
                          for weight in backbone.get_weights()])
    path = tmp_path_factory.mktemp("weights") / "efficientnetv2b0_backbone.weights.h5"
    backbone.save_weights(path)
    return path, fingerprints(backbone.layers)


def test_transfer_loads_the_file_trains_only_the_head_then_only_the_unfrozen_top_blocks(
        tiny_dataset, tmp_path, backbone_file, phase_records, capsys):
    path, file_fingerprints = backbone_file
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "run"), *TINY,
                       "--set", "model.name=efficientnetv2b0_imagenet", "--set", f"model.weights={path}",
                       "--set", "model.fine_tune_blocks=2", "--set", "train.fine_tune_epochs=1",
                       "--set", "train.fine_tune_learning_rate=0.01", "--set", "train.learning_rate=0.01"])
    assert code == 0, capsys.readouterr().err
    head, fine_tune = phase_records
    assert (head["phase"].name, fine_tune["phase"].name) == ("head", "fine-tune")
    model = fine_tune["model"]
    backbone_layers = [name for name in head["begin"] if name != "logits"]

    # The backbone starts with the file's weights, layer for layer.
    assert {name: head["begin"][name] for name in backbone_layers} == file_fingerprints

    # Phase 1: only the new head learns; frozen BatchNorm keeps even its moving statistics.
    assert changed(head["begin"], head["end"]) == ["logits"]

    # Phase 2: the head and the top two blocks' layers with weights, except BatchNorm.
    blocks = backbone_blocks(model)
    top_two = list(blocks)[-2:]
    assert top_two == ["block6h", "top"]
    unfrozen = {layer.name for block in top_two for layer in blocks[block]
                if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    assert set(changed(fine_tune["begin"], fine_tune["end"])) == unfrozen | {"logits"}
    assert fine_tune["begin"] == head["end"]  # phase 2 continues from phase 1's weights

    with open(tmp_path / "run" / "history.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]  # one history, both phases


# --- Progressive resizing --------------------------------------------------------------


@pytest.fixture(scope="module")
def progressive_run(tiny_dataset, tmp_path_factory):
    """A mycnn run trained at 32 px, then 40 px (the final size), 1 epoch each."""
    run_dir = tmp_path_factory.mktemp("progressive") / "run"
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *TINY,
                       "--set", "data.image_size=40", "--set", "train.epochs=2",
                       "--set", "train.progressive_sizes=[32, 40]", "--set", "train.progressive_epochs=[1, 1]",
                       "--set", "train.optimizer=sgd", "--set", "train.nesterov=true",
                       "--set", "train.schedule=onecycle", "--set", "train.learning_rate=0.01",
                       "--set", "augment.resize_crop=44", "--set", "data.balanced_sampling=true"])
    assert code == 0
    return run_dir


def test_progressive_resizing_trains_each_size_in_turn_and_ends_at_the_final_size(progressive_run, tiny_dataset):
    model = load_model_safely(progressive_run / "best.keras")
    assert model.input_shape == (None, 40, 40, 3)  # only the final stage may write best.keras
    with open(progressive_run / "history.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]
    # One optimizer schedule across the stages: the saved optimizer has taken every step.
    splits = json.loads((progressive_run / "splits.json").read_text())
    steps = 2 * -(-len(splits["train"]) // 8)
    compiled = keras.saving.load_model(progressive_run / "best.keras")
    assert int(compiled.optimizer.iterations.numpy()) == steps


def test_a_stage_of_another_size_starts_from_the_previous_stages_weights(tiny_dataset, tmp_path, phase_records):
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "run"), *TINY,
                       "--set", "data.image_size=40", "--set", "train.epochs=2",
                       "--set", "train.progressive_sizes=[32, 40]", "--set", "train.progressive_epochs=[1, 1]"])
    assert code == 0
    first, second = phase_records
    assert (first["model"].input_shape[1], second["model"].input_shape[1]) == (32, 40)
    assert second["begin"] == first["end"]
    assert (first["phase"].saves_best, second["phase"].saves_best) == (False, True)


def test_progressive_resizing_refuses_a_model_whose_weights_depend_on_the_size(tiny_dataset, tmp_path, capsys):
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "run"), *TINY,
                       "--set", "model.name=small_cnn_4", "--set", "data.image_size=64",
                       "--set", "train.epochs=2", "--set", "train.progressive_sizes=[40, 64]",
                       "--set", "train.progressive_epochs=[1, 1]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "progressive resizing needs a model whose weights do not depend on the input size" in err[0]
    assert "fc1" in err[0]  # flattens 1 x 1 x 16 features at 40 px, 3 x 3 x 16 at 64 px


# --- Starting from another run ---------------------------------------------------------


def test_init_from_copies_another_runs_weights_and_gives_a_new_head_for_other_classes(
        progressive_run, tiny_dataset, tmp_path, phase_records, capsys):
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "run"), *TINY,
                       "--init-from", str(progressive_run),
                       "--set", "data.include_classes=circle,ring,triangle"])
    assert code == 0
    assert f"initialized mycnn from {progressive_run / 'best.keras'}; new logits for 3 classes (it had 4)" \
        in capsys.readouterr().out
    source = fingerprints(load_model_safely(progressive_run / "best.keras").layers)
    start = phase_records[0]["begin"]
    assert changed(source, {**start, "logits": source["logits"]}) == []  # all but the head copied
    assert start["logits"] != source["logits"]
    assert phase_records[0]["model"].output_shape == (None, 3)
    assert phase_records[0]["phase"].trainable == "all"


def test_init_from_another_architecture_is_refused_with_the_model_to_use(progressive_run, tiny_dataset,
                                                                       tmp_path, capsys):
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "run"), *TINY,
                       "--init-from", str(progressive_run), "--set", "model.name=resnet18"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds a 'mycnn' model, but this run builds 'resnet18'; set model.name=mycnn" in err[0]


def test_a_dry_run_checks_init_from_as_training_would(progressive_run, tiny_dataset, tmp_path, capsys):
    assert train.main(["--data", str(tiny_dataset), *TINY, "--init-from", str(progressive_run),
                       "--dry-run"]) == 0
    assert f"initialized mycnn from {progressive_run / 'best.keras'}" in capsys.readouterr().out
    code = train.main(["--data", str(tiny_dataset), *TINY, "--init-from", str(tmp_path / "no_such_run"),
                       "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_such_run" in err[0], err


# --- Plans -----------------------------------------------------------------------------


def test_a_plain_run_is_one_phase_and_transfer_adds_a_fine_tuning_phase():
    (plain,) = phases.plan_phases(load_config(None, ["train.epochs=4"]))
    assert (plain.name, plain.first_epoch, plain.last_epoch, plain.trainable) == ("train", 0, 4, "all")
    head, fine_tune = phases.plan_phases(load_config(None, [
        "model.name=resnet50_imagenet", "model.weights=imagenet", "train.epochs=2",
        "model.fine_tune_blocks=-1", "train.fine_tune_epochs=3", "train.fine_tune_learning_rate=1e-5"]))
    assert (head.trainable, head.first_epoch, head.last_epoch, head.learning_rate) == ("head", 0, 2, 1e-3)
    assert (fine_tune.trainable, fine_tune.first_epoch, fine_tune.last_epoch) == (-1, 2, 5)
    assert (fine_tune.learning_rate, fine_tune.schedule_epochs, fine_tune.continues_optimizer) == (1e-5, 3, False)


def test_progressive_stages_share_one_schedule_and_scale_the_crop():
    stages = phases.plan_phases(load_config(None, [
        "data.image_size=224", "augment.resize_crop=256", "train.epochs=20",
        "train.progressive_sizes=[112, 224]", "train.progressive_epochs=[12, 8]"]))
    assert [(stage.image_size, stage.first_epoch, stage.last_epoch) for stage in stages] == [(112, 0, 12), (224, 12, 20)]
    assert [stage.config.augment.resize_crop for stage in stages] == [128, 256]
    assert [stage.schedule_epochs for stage in stages] == [20, 20]
    assert [stage.continues_optimizer for stage in stages] == [False, True]


@pytest.mark.parametrize("overrides, message", [
    (["train.fine_tune_epochs=3", "model.fine_tune_blocks=2"], "needs pretrained weights: set model.weights"),
    (["model.name=resnet50_imagenet", "model.weights=imagenet", "train.fine_tune_epochs=3"],
     "needs both train.fine_tune_epochs >= 1 and model.fine_tune_blocks"),
    (["model.name=resnet50_imagenet", "model.weights=imagenet", "train.fine_tune_epochs=3",
      "model.fine_tune_blocks=-2"], r"model.fine_tune_blocks must be -1 \(all\) or a number of blocks >= 1"),
    (["model.name=resnet50_imagenet", "model.weights=imagenet", "model.init_from=runs/x"],
     "both set the starting weights"),
    (["train.progressive_sizes=[112, 224]", "train.progressive_epochs=[10]"], "one entry per stage"),
    (["data.image_size=224", "train.epochs=10", "train.progressive_sizes=[0, 224]", "train.progressive_epochs=[5, 5]"],
     "progressive sizes and epochs must be positive"),
    (["data.image_size=224", "train.progressive_sizes=[112, 160]", "train.progressive_epochs=[10, 10]"],
     "the last of train.progressive_sizes must be data.image_size=224"),
    (["data.image_size=224", "train.epochs=30", "train.progressive_sizes=[112, 224]",
      "train.progressive_epochs=[10, 10]"], "must add up to train.epochs=30"),
])
def test_phase_settings_that_contradict_each_other_are_refused_as_the_config_loads(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


def test_pretrained_weights_for_a_model_trained_from_scratch_are_refused_when_the_phases_are_planned():
    config = load_config(None, ["model.name=resnet18", "model.weights=imagenet"])  # the model registry knows, not the config
    with pytest.raises(UserError, match="'resnet18' is trained from scratch"):
        phases.plan_phases(config)
