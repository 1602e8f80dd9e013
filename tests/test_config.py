import pathlib

import pytest

from keras_caltech.config import load_config, save_config
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
    config = load_config(None, ["train.progressive_sizes=[128, 224]", "train.progressive_epochs=6,4"])
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


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(None, ["train.epochs=2", "data.include_classes=a,b"])
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


CONFIG_IDS = [str(p.relative_to(p.parents[1])) for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=CONFIG_IDS)
def test_every_shipped_config_loads_and_validates(path):
    from keras_caltech.data.augment import build_augmenter
    from keras_caltech.models import get_model_entry
    from keras_caltech.training import phases, recipes
    from keras_caltech.training.optim import make_optimizer

    from keras_caltech.training import auto

    # Settings left to the data are checked with typical values, as training checks them.
    config = auto.stand_in(load_config(path), get_model_entry(load_config(path).model.name).default_image_size)
    phases.plan_phases(config)
    recipes.check_recipe(config)
    build_augmenter(config.augment, config.data.image_size)
    make_optimizer(config.train, steps_per_epoch=100)
    header = path.read_text()
    assert header.startswith("#"), "configs state what they reproduce in a header comment"
    if path.parent.name.startswith("caltech"):
        assert "# Published:" in header and f"--config configs/{path.parent.name}/{path.name}" in header
        if not config.data.include_classes:
            assert {"257.clutter", "BACKGROUND_Google"} & set(config.data.exclude_classes)


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
