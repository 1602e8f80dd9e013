"""Run configuration: defaults in code, differences in YAML, overrides on the command line.

A config file lists only what differs from the defaults below, by section::

    name: mycnn_adam
    data: {image_size: 224, batch_size: 64}
    train: {epochs: 20, optimizer: adam, learning_rate: 1e-3}

``--set train.epochs=3`` overrides one field. Unknown keys and values of the wrong type
are refused with the dotted path in the message. The resolved config is saved beside
every trained model (``config.yaml`` in the run folder).
"""

import dataclasses
import difflib
import pathlib
import typing

import yaml

from keras_caltech.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and preprocessed."""

    root: str = ""  # folder-per-class tree; "" means the built-in synthetic dataset
    synthetic_dir: str = "data/synthetic"  # where the synthetic dataset is generated once
    synthetic_images_per_class: int = 200
    synthetic_seed: int = 0
    cache_dir: str = "data/cache"  # scan results, keyed by the dataset's path
    image_size: int = 224
    batch_size: int = 32
    exclude_classes: tuple[str, ...] = ()  # folder names or names without the NNN. prefix
    include_classes: tuple[str, ...] = ()  # keep only these (empty: all)
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # share of the training part held out for checkpoint selection
    train_per_class: int = 0  # >0: the literature's protocol, N training images per class, rest test
    split_seed: int = 0
    normalization: str = "dataset"  # dataset | imagenet | half
    cache: str = "none"  # none | memory | disk: cache decoded, resized images
    scan_workers: int = 0  # threads for the corrupt-file scan; 0 = one per CPU core


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-split augmentation. Evaluation and serving never augment."""

    horizontal_flip: bool = True  # never vertical: some classes are not vertically symmetric
    rotation: float = 0.0  # max rotation as a fraction of a full turn
    translation: float = 0.0  # max shift as a fraction of the image side
    zoom: float = 0.0  # max zoom as a fraction (in and out)
    shear: float = 0.0  # max shear as a fraction
    resize_crop: int = 0  # >0: resize to this side, then random-crop to image_size
    random_resized_crop: bool = False  # keras-cv RandomCropAndResize
    crop_area_min: float = 0.25  # smallest crop area fraction for random_resized_crop
    color_jitter: float = 0.0  # brightness/contrast/saturation factor, 0 = off


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which architecture, and its options."""

    name: str = "mycnn"
    dropout: float = 0.5


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and loop settings."""

    epochs: int = 20
    optimizer: str = "adam"  # adam | sgd
    learning_rate: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "step"  # constant | step
    step_epochs: int = 10  # step schedule: multiply the rate by step_gamma every step_epochs
    step_gamma: float = 0.1
    seed: int = 0
    tensorboard: bool = True
    strategy: str = "auto"  # auto | one | mirrored | multiworker (see training/distribute.py)
    precision: str = "float32"  # float32 | mixed_float16 (GPUs) | mixed_bfloat16 (CPUs with bfloat16 support)
    jit_compile: bool = False  # compile the training step with XLA
    deterministic: bool = False  # deterministic ops: a resumed run matches an uninterrupted one bit for bit


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run's configuration."""

    name: str = "default"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def _coerce(value, field_type, path):
    """Returns ``value`` as ``field_type``, or raises UserError naming the dotted ``path``."""
    if field_type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif field_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif field_type is float:
        # PyYAML reads 1e-3 (no dot) as a string, so numeric strings are accepted.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif field_type is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typing.get_origin(field_type) is tuple:
        if value is None or value == "":
            return ()
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            return tuple(_coerce(item, str, path).strip() for item in items)
    type_name = getattr(field_type, "__name__", str(field_type))
    raise UserError(f"{path} must be {type_name}. Received: {value!r}")


def _build(cls, values, path):
    """Builds dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise UserError(f"{path or 'config'} must be a mapping of keys to values. Received: {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {(path + '.' if path else '') + close[0]}?" if close else ""
            raise UserError(f"unknown config key {dotted!r}.{hint} Valid keys"
                            f"{' in ' + path if path else ''}: {', '.join(fields)}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, dotted)
        else:
            kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def config_to_dict(config):
    """Returns the config as nested plain dicts and lists (YAML- and JSON-ready)."""
    def plain(value):
        if isinstance(value, tuple):
            return list(value)
        return value
    return {key: ({k: plain(v) for k, v in value.items()} if isinstance(value, dict) else value)
            for key, value in dataclasses.asdict(config).items()}


def _set_dotted(values, assignment):
    """Applies one ``section.key=value`` override to a nested dict of raw values."""
    if "=" not in assignment:
        raise UserError(f"--set expects section.key=value. Received: {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    target = values
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise UserError(f"--set {dotted}: {key!r} is not a section")
    # YAML parses the value so "3" is an int, "true" a bool, "[a, b]" a list.
    try:
        target[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        target[keys[-1]] = raw


# Values below these would fail deep inside TensorFlow (a batch of 0 images) or train nothing.
_AT_LEAST_ONE = ("data.image_size", "data.batch_size", "train.epochs", "train.step_epochs")
_FRACTIONS = ("data.test_fraction", "data.val_fraction")  # shares in [0, 1)


def _check_ranges(config):
    """Raises UserError naming the dotted path of a number outside its range."""
    for dotted in _AT_LEAST_ONE + _FRACTIONS:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if dotted in _AT_LEAST_ONE and value < 1:
            raise UserError(f"{dotted} must be at least 1. Received: {value}")
        if dotted in _FRACTIONS and not 0 <= value < 1:
            raise UserError(f"{dotted} must be a fraction in [0, 1). Received: {value}")
    return config


def load_config(path=None, overrides=()):
    """Loads a YAML config over the defaults and applies ``section.key=value`` overrides.

    Args:
        path: a YAML file, or None for the defaults alone.
        overrides: strings like ``"train.epochs=3"``.

    Returns:
        A frozen :class:`Config`.

    Raises:
        UserError: missing or unreadable file, bad YAML, unknown key, wrongly typed or
            out-of-range value.
    """
    values = {}
    if path is not None:
        path = pathlib.Path(path)
        if path.is_dir():
            raise UserError(f"--config expects a YAML file, received a directory: {path}. "
                            "Pass one of its .yaml files")
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except PermissionError:
            raise UserError(f"cannot read config file {path}: permission denied. "
                            f"Make it readable (chmod u+r {path})")
        except UnicodeDecodeError:
            raise UserError(f"config file {path} is not a text file (YAML expected)")
        except yaml.YAMLError as error:
            raise UserError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}")
    for assignment in overrides:
        _set_dotted(values, assignment)
    return _check_ranges(_build(Config, values, ""))


def save_config(config, path):
    """Writes the resolved config as YAML."""
    pathlib.Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
