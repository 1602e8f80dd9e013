"""Run configuration: defaults in code, differences in YAML, overrides on the command line.

A config file lists only what differs from the defaults below, by section::

    name: mycnn_adam
    data: {image_size: 224, batch_size: 64}
    train: {epochs: 20, optimizer: adam, learning_rate: 1e-3}

``--set train.epochs=3`` overrides one field. Unknown keys and values of the wrong type
are refused with the dotted path in the message. The resolved config is saved beside
every trained model (``config.yaml`` in the run folder).

A Config is valid once it is loaded: :func:`load_config` refuses a value outside its
range or its choices, and settings that contradict each other, before any data is read
or any run folder exists. Those checks, and the lists of choices, live in
``keras_caltech.config_checks``; the modules that act on a field import its choices
from here, where they are re-exported. What only the data or the model can tell (a
class count, a layer name, the model's smallest input) is checked where it is known.
"""

import dataclasses
import difflib
import pathlib
import typing

import yaml

# The choices are re-exported: the modules that act on a field import them from here.
from keras_caltech.config_checks import (AUTO, AUTO_CACHE, CACHE_MODES, CHOICES,  # noqa: F401
                                         CLASS_WEIGHT_MODES, DATASET_CLASSES, HEADS, NORMALIZATIONS, OPTIMIZERS,
                                         PRECISIONS, PROTOCOLS, SCHEDULES, STRATEGIES, TTA_MODES,
                                         ZERO_MEANS_AUTO, check_choice, check_config,
                                         weights_argument)
from keras_caltech.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and preprocessed."""

    root: str = ""  # folder-per-class tree; "" means the built-in synthetic dataset
    dataset: str = ""  # the published dataset a config is for (caltech256, caltech101); "" for any tree
    synthetic_dir: str = "data/synthetic"  # where the synthetic dataset is generated once
    synthetic_images_per_class: int = 500
    synthetic_seed: int = 0
    cache_dir: str = "data/cache"  # scan results, keyed by the dataset's path
    image_size: int = 224  # 0: chosen from the training images (training/auto.py)
    batch_size: int = 32
    exclude_classes: tuple[str, ...] = ()  # folder names or names without the NNN. prefix
    include_classes: tuple[str, ...] = ()  # keep only these (empty: all)
    # train_val_test: train, select the checkpoint on val, report on an unseen test split.
    # train_val: the published reports' protocol: train on all but test_fraction, which
    # both selects the checkpoint and is reported (as validation accuracy); no val_fraction.
    protocol: str = "train_val_test"
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # train_val_test: share of the training part held out for checkpoint selection
    train_per_class: int = 0  # >0: the literature's protocol, N training images per class, rest test
    test_per_class: int = 0  # >0: at most N test images per class (the rest unused), as some reports tested
    split_seed: int = 0
    normalization: str = "dataset"  # dataset | imagenet | half
    cache: str = "none"  # none | memory | disk | auto (memory when it fits, else disk): decoded, resized images
    scan_workers: int = 0  # threads for the corrupt-file scan; 0 = one per CPU core
    # Draw every class equally often in training (oversampling the rare ones; Caltech-256
    # has 80 to 827 images per class). An epoch still holds as many images as the split;
    # images are decoded as drawn, so data.cache does not apply to the training split.
    balanced_sampling: bool = False


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
    rand_augment_ops: int = 0  # RandAugment: random operations per image (2 in the paper); 0 = off
    rand_augment_factor: float = 0.5  # RandAugment strength, 0-1
    random_erasing: float = 0.0  # probability of erasing a random patch of an image; 0 = off
    # Batch mixing, after the augmentation above; each turns labels into class
    # probabilities. With both on, each batch gets one of the two, at random.
    mixup_alpha: float = 0.0  # MixUp weights ~ Beta(alpha, alpha); 0 = off (0.2 is usual)
    cutmix_alpha: float = 0.0  # CutMix patch areas ~ Beta(alpha, alpha), 0-1; 0 = off (1.0 in the paper)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which architecture, and its options."""

    name: str = "mycnn"
    dropout: float | None = None  # None: the architecture's published default
    # Pretrained models (*_imagenet): imagenet | none | a backbone .weights.h5 file. With
    # weights, train.epochs trains the new head on a frozen backbone (phase 1).
    weights: str = "none"
    fine_tune_blocks: int = 0  # phase 2: unfreeze this many top backbone blocks (-1: all)
    # pooled: GAP -> Dropout -> Dense on the backbone, any size. top (vgg19_imagenet): keep
    # VGG's ImageNet classifier, fc1 and fc2, and replace its 1000-way layer; 224 px only.
    head: str = "pooled"
    init_from: str = ""  # a run folder (its best.keras) or .keras file whose weights start this run


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and loop settings."""

    epochs: int = 20  # 0: chosen from the training split's size (training/auto.py)
    optimizer: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 1e-3  # the starting rate; the peak for onecycle and cosine
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # adam, sgd: an L2 term added to the gradient, as PyTorch's weight_decay (the reports'
    # framework); adamw: decoupled decay of the weights (AdamW).
    weight_decay: float = 0.0
    schedule: str = "step"  # constant | step | onecycle | cosine
    step_epochs: int = 10  # step schedule: multiply the rate by step_gamma every step_epochs
    step_gamma: float = 0.1
    pct_start: float = 0.3  # onecycle: share of the steps spent rising to learning_rate
    warmup_epochs: float = 0.0  # cosine: linear warm-up from 0 to learning_rate
    label_smoothing: float = 0.0  # 0-1; turns labels into class probabilities
    class_weight: str = "none"  # none | balanced: weight each class's loss by n / (classes x n_class)
    # Progressive resizing: train at these sizes for these epochs (summing to epochs); the
    # last size must be data.image_size. Empty: one size.
    progressive_sizes: tuple[int, ...] = ()
    progressive_epochs: tuple[int, ...] = ()
    fine_tune_epochs: int = 0  # phase 2 after a frozen-backbone phase; needs model.fine_tune_blocks
    fine_tune_learning_rate: float = 1e-4  # phase 2's rate, with the same schedule
    seed: int = 0
    tensorboard: bool = True
    strategy: str = "auto"  # auto | one | mirrored | multiworker (see training/distribute.py)
    precision: str = "float32"  # float32 | mixed_float16 (GPUs) | mixed_bfloat16 (CPUs with bfloat16 support)
    jit_compile: bool = False  # compile the training step with XLA
    deterministic: bool = False  # deterministic ops: a resumed run matches an uninterrupted one bit for bit


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The TF Serving SavedModel written at the end of training (``python -m keras_caltech export`` later)."""

    enabled: bool = True
    base_dir: str = "saved_models"  # the model lands in BASE_DIR/NAME/VERSION/, the next free version
    name: str = ""  # the served model's name; "" means the run folder's name


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How the best checkpoint is evaluated at the end of training (and by default by ``evaluate``)."""

    tta: str = "none"  # none | flip | 10crop: test-time augmentation, logits averaged over the views


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run's configuration."""

    name: str = "default"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def _coerce(value, field_type, path):
    """Returns ``value`` as ``field_type``, or raises UserError naming the dotted ``path``."""
    arguments = typing.get_args(field_type)
    if type(None) in arguments:  # an optional field: "none"/null means unset
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (field_type,) = [argument for argument in arguments if argument is not type(None)]
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
        item_type = typing.get_args(field_type)[0]  # tuple[str, ...] or tuple[int, ...]
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            return tuple(_coerce(item.strip() if isinstance(item, str) else item, item_type, path)
                         for item in items)
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


def _shown(value):
    """A default as ``--set`` would take it: true, none, [128, 224], ""."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else '""'


def describe_fields():
    """Every config field with its default, grouped by section, for ``train.py --help``.

    Read from the dataclasses above (and :data:`CHOICES`), so it cannot drift from them.

    Returns:
        Lines of text: a heading, then per section its docstring's summary and one
        ``section.field = default`` line per field, with its choices when it has them.
    """
    defaults = Config()
    lines = ["config fields (--set SECTION.FIELD=VALUE, or a YAML file of what differs) and their defaults:"]
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        if not dataclasses.is_dataclass(value):
            lines.append(f"  {section.name} = {_shown(value)}")
            continue
        summary = type(value).__doc__.splitlines()[0].replace("``", "")
        lines += ["", f"  {section.name}: {summary}"]
        for field in dataclasses.fields(value):
            dotted = f"{section.name}.{field.name}"
            note = ""
            if dotted in CHOICES:
                note = "  (" + " | ".join(CHOICES[dotted][0]) + ")"
            elif dotted in ZERO_MEANS_AUTO:
                note = "  (0: chosen from the data)"
            lines.append(f"    {dotted} = {_shown(getattr(value, field.name))}{note}")
    return "\n".join(lines)


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


def load_config(path=None, overrides=()):
    """Loads a YAML config over the defaults and applies ``section.key=value`` overrides.

    Args:
        path: a YAML file, or None for the defaults alone.
        overrides: strings like ``"train.epochs=3"``.

    Returns:
        A frozen :class:`Config`.

    Raises:
        UserError: missing or unreadable file, bad YAML, unknown key, wrongly typed or
            out-of-range value, unknown choice, or settings that contradict each other.
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
    return check_config(_build(Config, values, ""))
