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


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_every_shipped_config_loads_and_names_a_registered_model(path):
    from keras_caltech.models import get_model_entry

    config = load_config(path)
    get_model_entry(config.model.name)
    assert path.read_text().startswith("#"), "configs state what they reproduce in a header comment"


def test_an_optional_field_accepts_none_and_numbers():
    assert load_config(None).model.dropout is None  # the architecture's published default
    assert load_config(None, ["model.dropout=0.3"]).model.dropout == 0.3
    assert load_config(None, ["model.dropout=0.3", "model.dropout=none"]).model.dropout is None
    with pytest.raises(UserError, match="model.dropout must be float"):
        load_config(None, ["model.dropout=high"])
