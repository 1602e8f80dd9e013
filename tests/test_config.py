import pathlib

import pytest

from keras_caltech.config import load_config
from keras_caltech.errors import UserError

CONFIGS = sorted(pathlib.Path(__file__).resolve().parent.parent.joinpath("configs").rglob("*.yaml"))


def test_defaults_live_in_code_and_yaml_lists_differences(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {epochs: 7, learning_rate: 1e-3}\n")
    config = load_config(path)
    assert config.name == "x" and config.train.epochs == 7
    assert config.train.learning_rate == 0.001  # PyYAML reads 1e-3 as a string: coerced
    assert config.data.batch_size == 32 and config.model.name == "mycnn"


def test_dotted_overrides_change_any_field():
    config = load_config(None, ["train.epochs=3", "data.image_size=48", "model.name=mycnn",
                                "data.exclude_classes=257.clutter,BACKGROUND_Google", "augment.horizontal_flip=false"])
    assert config.train.epochs == 3 and config.data.image_size == 48
    assert config.data.exclude_classes == ("257.clutter", "BACKGROUND_Google")
    assert config.augment.horizontal_flip is False


def test_lists_of_numbers_are_coerced_item_by_item():
    config = load_config(None, ["train.progressive_sizes=[128, 224]", "train.progressive_epochs=6,4",
                                "train.epochs=10"])
    assert config.train.progressive_sizes == (128, 224) and config.train.progressive_epochs == (6, 4)
    with pytest.raises(UserError, match="train.progressive_sizes must be int. Received: 'big'"):
        load_config(None, ["train.progressive_sizes=[128, big]"])


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'. Did you mean train.epochs?"),
    ("trian.epochs=3", "unknown config key 'trian'"),
    ("train.epochs=three", "train.epochs must be int. Received: 'three'"),
    ("train.learning_rate=fast", "train.learning_rate must be float"),
    ("augment.horizontal_flip=maybe", "augment.horizontal_flip must be bool"),
    ("train.epochs", "--set expects section.key=value"),
])
def test_unknown_keys_and_wrong_types_are_refused_with_the_dotted_path(override, message):
    with pytest.raises(UserError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_resolved_config_round_trips_through_the_runs_config_yaml(tmp_path):
    from keras_caltech.training.trainer import write_run_config

    config = load_config(None, ["train.epochs=2", "data.include_classes=a,b"])
    write_run_config(tmp_path, config)  # as the trainer writes every run's config.yaml
    assert load_config(tmp_path / "config.yaml") == config


CONFIG_IDS = [str(p.relative_to(p.parents[1])) for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=CONFIG_IDS)
def test_every_shipped_config_loads_and_validates(path):
    from keras_caltech.data.augment import build_augmenter
    from keras_caltech.models import get_model_entry
    from keras_caltech.training import auto, phases
    from keras_caltech.training.optim import make_optimizer

    # Settings left to the data are checked with typical values, as training checks them.
    config = auto.stand_in(load_config(path), get_model_entry(load_config(path).model.name).default_image_size)
    phases.plan_phases(config)
    build_augmenter(config.augment, config.data.image_size)
    make_optimizer(config.train, steps_per_epoch=100)
    header = path.read_text()
    assert header.startswith("#"), "configs state what they reproduce in a header comment"
    if path.parent.name.startswith("caltech"):
        assert "# Published:" in header and f"--config configs/{path.parent.name}/{path.name}" in header
        if not config.data.include_classes:  # the background class kept or dropped as the header says
            kept = "the clutter class kept" in header
            assert kept != bool({"257.clutter", "BACKGROUND_Google"} & set(config.data.exclude_classes)), path
        if "with 10-crop testing" in header:  # the published figure is 10-crop: training ends with it
            assert config.eval.tta == "10crop", path


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """Empty class folders: a dry run only lists them. Includes the Caltech-101 five."""
    root = tmp_path_factory.mktemp("classes")
    for name in ("001.ak47", "002.american-flag", "bonsai", "hawksbill", "menorah", "scorpion", "sunflower"):
        (root / name).mkdir()
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=CONFIG_IDS)
def test_every_shipped_config_builds_in_a_dry_run_at_its_own_size(path, class_folders, capsys):
    import train

    from keras_caltech.models import get_model_entry
    from keras_caltech.training import auto

    config = load_config(path)
    assert train.main(["--config", str(path), "--data", str(class_folders), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # An auto size with no image to read falls back to the model's published size, capped.
    size = config.data.image_size or min(get_model_entry(config.model.name).default_image_size,
                                         auto.MAX_AUTO_IMAGE_SIZE)
    assert f"{config.model.name}: " in out and " parameters, " in out and f"{size} px input" in out
    if config.model.weights != "none":
        assert "not loaded: a dry run never reads or downloads weights" in out


def test_an_optional_field_accepts_none_and_numbers():
    assert load_config(None).model.dropout is None  # the architecture's published default
    assert load_config(None, ["model.dropout=0.3"]).model.dropout == 0.3
    assert load_config(None, ["model.dropout=0.3", "model.dropout=none"]).model.dropout is None
    with pytest.raises(UserError, match="model.dropout must be float"):
        load_config(None, ["model.dropout=high"])


# --- A Config is valid once loaded ---------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    # Named choices: the modules that act on a field import its choices from config.py.
    (["data.normalization=zscore"], "unknown data.normalization 'zscore'. Valid choices: imagenet, half, dataset"),
    (["data.cache=ram"], "unknown data.cache 'ram'. Valid choices: none, memory, disk, auto"),
    (["train.optimizer=adagrad"], "unknown train.optimizer 'adagrad'. Valid optimizers: adam, adamw, sgd"),
    (["train.schedule=poly"], "unknown train.schedule 'poly'. Valid schedules: constant, step, onecycle, cosine"),
    (["train.class_weight=inverse"], "unknown train.class_weight 'inverse'. Valid modes: none, balanced"),
    (["train.strategy=tpu"], "unknown train.strategy 'tpu'. Valid choices: auto, one, mirrored, multiworker"),
    (["train.precision=fp8"], "unknown train.precision 'fp8'. Valid choices: float32, mixed_float16, mixed_bfloat16"),
    (["eval.tta=12crop"], "unknown TTA mode '12crop'. Valid modes: none, flip, 10crop"),
    # Ranges once checked as the augmenter was built, the optimizer made or the schedule started.
    (["augment.rand_augment_ops=-1"], "augment.rand_augment_ops must be >= 0 (0 = off, 2 is usual). Received: -1"),
    (["augment.rand_augment_factor=1.5"], "augment.rand_augment_factor must be between 0 and 1. Received: 1.5"),
    (["augment.rotation=-0.1"], "augment.rotation must be between 0 and 1. Received: -0.1"),
    (["augment.resize_crop=-1"], "augment.resize_crop must be at least 0. Received: -1"),
    (["train.weight_decay=-1"], "train.weight_decay must be >= 0. Received: -1.0"),
    (["train.learning_rate=0"], "train.learning_rate must be > 0. Received: 0.0"),
    (["train.fine_tune_learning_rate=-1e-4"], "train.fine_tune_learning_rate must be > 0. Received: -0.0001"),
    (["train.step_gamma=0"], "train.step_gamma must be > 0. Received: 0.0"),
    (["train.pct_start=1"], "train.pct_start must be a fraction in [0, 1). Received: 1.0"),
    (["train.schedule=cosine", "train.epochs=5", "train.warmup_epochs=5"],
     "train.warmup_epochs must be at least 0 and fewer than the 5 epochs it warms up. Received: 5.0"),
    (["model.name=resnet50_imagenet", "model.weights=imagenet", "train.schedule=cosine", "train.epochs=10",
      "train.warmup_epochs=3", "train.fine_tune_epochs=2", "model.fine_tune_blocks=1"],
     "fewer than the 2 epochs it warms up"),  # the fine-tuning phase runs the schedule anew
    (["train.label_smoothing=1"], "train.label_smoothing must be in [0, 1) (0.1 is usual). Received: 1.0"),
    (["data.protocol=holdout"], "unknown data.protocol 'holdout'. Valid protocols: train_val_test, train_val"),
    # NaN passes every comparison, so each float is checked to be finite first.
    (["augment.mixup_alpha=nan"], "augment.mixup_alpha must be a finite number. Received: nan"),
    (["train.step_gamma=nan"], "train.step_gamma must be a finite number. Received: nan"),
    (["train.learning_rate=inf"], "train.learning_rate must be a finite number. Received: inf"),
    (["model.dropout=nan"], "model.dropout must be a finite number. Received: nan"),
    # Names that become folders stay one folder name.
    (["name=../../x"], "name becomes a folder name, so it cannot hold a path separator, '..' or a control"),
    (["name=a\\b"], "Received: 'a\\\\b'"),
    (["export.name=.."], "export.name becomes a folder name"),
    (["name=run\x00x"], "Received: 'run\\x00x'"),
    # Settings that contradict each other.
    (["train.class_weight=balanced", "data.balanced_sampling=true"], "together over-correct it; use one of them"),
    (["train.epochs=0", "train.progressive_sizes=[112, 224]", "train.progressive_epochs=[10, 10]"],
     "progressive resizing (train.progressive_sizes) needs an explicit train.epochs; 0 means chosen from the data"),
    (["train.fine_tune_epochs=3", "model.fine_tune_blocks=2"], "needs pretrained weights: set model.weights"),
])
def test_a_bad_override_is_refused_as_the_config_loads_with_the_field_and_the_value(overrides, message):
    with pytest.raises(UserError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_config_file_is_checked_as_overrides_are(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {optimizer: adagrad}\n")
    with pytest.raises(UserError, match="unknown train.optimizer 'adagrad'. Valid optimizers"):
        load_config(path)
    path.write_text("train: {optimizer: sgd}\n")
    with pytest.raises(UserError, match="unknown train.optimizer 'adagrad'"):  # --set is checked after the file
        load_config(path, ["train.optimizer=adagrad"])


def test_every_valid_choice_is_one_the_code_acting_on_it_handles():
    """A choice added to config_checks.py without the code for it fails here, not in a user's run."""
    import keras

    from keras_caltech import config as config_module
    from keras_caltech.data.pipeline import NORMALIZATION_MODES
    from keras_caltech.evaluation.tta import TTA_VIEWS
    from keras_caltech.training.optim import make_optimizer

    assert tuple(NORMALIZATION_MODES) == config_module.NORMALIZATIONS
    assert tuple(TTA_VIEWS) == config_module.TTA_MODES
    for optimizer in config_module.OPTIMIZERS:
        for schedule in config_module.SCHEDULES:
            train = load_config(None, [f"train.optimizer={optimizer}", f"train.schedule={schedule}"]).train
            assert isinstance(make_optimizer(train, steps_per_epoch=10), keras.optimizers.Optimizer)
    for dotted in config_module.CHOICES:  # each names a real field
        section, field = dotted.split(".")
        assert hasattr(getattr(config_module.Config(), section), field)


def test_train_help_lists_every_config_field_with_its_default_read_from_the_dataclasses(capsys):
    import dataclasses

    import train
    from keras_caltech.config import Config

    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for section in dataclasses.fields(Config):
        if dataclasses.is_dataclass(section.type):
            for field in dataclasses.fields(section.type):
                assert f"    {section.name}.{field.name} = " in out, f"{section.name}.{field.name} missing from --help"
    assert "  name = default\n" in out
    assert "    train.optimizer = adam  (adam | adamw | sgd)\n" in out
    assert "    data.image_size = 224  (0: chosen from the data)\n" in out
    assert "    model.dropout = none\n" in out and '    data.root = ""\n' in out
    assert "    train.learning_rate = 0.001\n" in out and "    data.exclude_classes = []\n" in out


REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, classes", [("caltech256/mycnn_adam.yaml", 257),  # the clutter class kept
                                           ("caltech256/resnet26_scratch.yaml", 256),
                                           ("caltech101/small_cnn_5_five_classes.yaml", 5),
                                           ("caltech101/resnet50_imagenet_finetune.yaml", 101)])
def test_a_dry_run_of_a_caltech_config_needs_no_copy_of_the_dataset(name, classes, capsys, monkeypatch):
    import train

    monkeypatch.chdir(REPO)  # nothing is written: no dataset is generated or downloaded

    assert train.main(["--config", f"configs/{name}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"no --data: {classes} classes from the config" in out and f" parameters, {classes} classes, " in out


@pytest.mark.parametrize("extra, message", [
    ([], "configs/caltech256/mycnn_adam.yaml trains on caltech256: give your copy with --data "
         "path/to/256_ObjectCategories, or download it with --dataset caltech256"),
    (["--dataset", "caltech101"], "configs/caltech256/mycnn_adam.yaml is for caltech256, not --dataset caltech101"),
    (["--set", "data.dataset=imagenet"], "unknown data.dataset 'imagenet'. Valid datasets: '', caltech256, caltech101, tinyimagenet, cifar100"),
])
def test_a_caltech_config_without_its_dataset_is_refused_before_any_download(extra, message, capsys, monkeypatch):
    import train

    monkeypatch.chdir(REPO)

    assert train.main(["--config", "configs/caltech256/mycnn_adam.yaml", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"], err
