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
or any run folder exists. The lists of choices live here, and the modules that act on
a field import them from here. What only the data or the model can tell (a class
count, a layer name, the model's smallest input) is checked where it is known.
"""

import dataclasses
import difflib
import pathlib
import typing

import yaml

from keras_caltech.errors import UserError

# The named choices of config fields, imported by the modules that act on them.
NORMALIZATIONS = ("imagenet", "half", "dataset")  # (mean, std) of each: data/pipeline.py
CACHE_MODES = ("none", "memory", "disk")  # what the input pipeline caches in
AUTO = 0  # data.image_size and train.epochs: chosen from the data (training/auto.py)
AUTO_CACHE = "auto"  # data.cache: memory or none, chosen from the data (training/auto.py)
OPTIMIZERS = ("adam", "adamw", "sgd")  # training/optim.py
SCHEDULES = ("constant", "step", "onecycle", "cosine")  # training/optim.py, training/schedules.py
CLASS_WEIGHT_MODES = ("none", "balanced")  # training/recipes.py
STRATEGIES = ("auto", "one", "mirrored", "multiworker")  # training/distribute.py
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # training/precision.py
TTA_MODES = ("none", "flip", "10crop")  # evaluation/tta.py

# field -> (its valid values, what an error calls them)
CHOICES = {
    "data.normalization": (NORMALIZATIONS, "choices"),
    "data.cache": (CACHE_MODES + (AUTO_CACHE,), "choices"),
    "train.optimizer": (OPTIMIZERS, "optimizers"),
    "train.schedule": (SCHEDULES, "schedules"),
    "train.class_weight": (CLASS_WEIGHT_MODES, "modes"),
    "train.strategy": (STRATEGIES, "choices"),
    "train.precision": (PRECISIONS, "choices"),
    "eval.tta": (TTA_MODES, "modes"),
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and preprocessed."""

    root: str = ""  # folder-per-class tree; "" means the built-in synthetic dataset
    synthetic_dir: str = "data/synthetic"  # where the synthetic dataset is generated once
    synthetic_images_per_class: int = 500
    synthetic_seed: int = 0
    cache_dir: str = "data/cache"  # scan results, keyed by the dataset's path
    image_size: int = 224  # 0: chosen from the training images (training/auto.py)
    batch_size: int = 32
    exclude_classes: tuple[str, ...] = ()  # folder names or names without the NNN. prefix
    include_classes: tuple[str, ...] = ()  # keep only these (empty: all)
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # share of the training part held out for checkpoint selection
    train_per_class: int = 0  # >0: the literature's protocol, N training images per class, rest test
    split_seed: int = 0
    normalization: str = "dataset"  # dataset | imagenet | half
    cache: str = "none"  # none | memory | disk | auto (memory when it fits): cache decoded, resized images
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
            elif dotted in _ZERO_MEANS_AUTO:
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


# Values below these would fail deep inside TensorFlow (a batch of 0 images) or train nothing.
_AT_LEAST_ONE = ("data.batch_size", "train.step_epochs")
_AT_LEAST_ZERO = ("data.train_per_class", "data.scan_workers", "augment.resize_crop")
_ZERO_MEANS_AUTO = ("data.image_size", "train.epochs")  # AUTO: chosen from the data (training/auto.py)
_FRACTIONS = ("data.test_fraction", "data.val_fraction", "train.momentum", "train.pct_start")  # in [0, 1)
_POSITIVE = ("train.learning_rate", "train.fine_tune_learning_rate", "train.step_gamma")
_UNIT_INTERVAL = ("augment.rand_augment_factor", "augment.random_erasing", "augment.rotation",
                  "augment.translation", "augment.zoom", "augment.shear", "augment.color_jitter")  # in [0, 1]


def _value(config, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def _check_numbers(config):
    """Raises UserError naming the dotted path of a number outside its range."""
    for dotted in _AT_LEAST_ONE + _AT_LEAST_ZERO + _ZERO_MEANS_AUTO + _FRACTIONS + _POSITIVE + _UNIT_INTERVAL:
        value = _value(config, dotted)
        if dotted in _AT_LEAST_ONE and value < 1:
            raise UserError(f"{dotted} must be at least 1. Received: {value}")
        if dotted in _ZERO_MEANS_AUTO and value < AUTO:
            raise UserError(f"{dotted} must be at least 1, or 0 to choose it from the data. Received: {value}")
        if dotted in _AT_LEAST_ZERO and value < 0:
            raise UserError(f"{dotted} must be at least 0. Received: {value}")
        if dotted in _FRACTIONS and not 0 <= value < 1:
            raise UserError(f"{dotted} must be a fraction in [0, 1). Received: {value}")
        if dotted in _POSITIVE and not value > 0:
            raise UserError(f"{dotted} must be > 0. Received: {value}")
        if dotted in _UNIT_INTERVAL and not 0.0 <= value <= 1.0:
            raise UserError(f"{dotted} must be between 0 and 1. Received: {value}")
    if config.model.dropout is not None and not 0 <= config.model.dropout < 1:
        raise UserError(f"model.dropout must be a fraction in [0, 1). Received: {config.model.dropout}")
    train, augment = config.train, config.augment
    if train.weight_decay < 0:
        raise UserError(f"train.weight_decay must be >= 0. Received: {train.weight_decay}")
    if not 0.0 <= train.label_smoothing < 1.0:
        raise UserError(f"train.label_smoothing must be in [0, 1) (0.1 is usual). "
                        f"Received: {train.label_smoothing}")
    if augment.rand_augment_ops < 0:
        raise UserError(f"augment.rand_augment_ops must be >= 0 (0 = off, 2 is usual). "
                        f"Received: {augment.rand_augment_ops}")
    if augment.mixup_alpha < 0:
        raise UserError(f"augment.mixup_alpha must be >= 0 (0 = off, 0.2 is usual). "
                        f"Received: {augment.mixup_alpha}")
    if not 0.0 <= augment.cutmix_alpha <= 1.0:
        raise UserError(f"augment.cutmix_alpha must be between 0 (off) and 1 (Keras's CutMix "
                        f"bound; 1.0 is the paper's). Received: {augment.cutmix_alpha}")


def check_choice(dotted, value):
    """Returns ``value`` if it is one of field ``dotted``'s :data:`CHOICES`; else raises UserError listing them.

    Also checks a command-line flag that stands in for a field: ``--tta`` of
    ``evaluate`` and ``ensemble`` is an ``eval.tta``.
    """
    choices, kind = CHOICES[dotted]
    if value not in choices:
        name = "TTA mode" if dotted == "eval.tta" else dotted  # the name --tta's users know it by
        raise UserError(f"unknown {name} {value!r}. Valid {kind}: {', '.join(choices)}")
    return value


def weights_argument(config):
    """``model.weights`` as ``create_model`` takes it: None, "imagenet" or a file path."""
    weights = config.model.weights.strip()
    return None if weights.lower() in ("", "none") else weights


def _check_progressive(config):
    """Raises UserError for progressive stages that do not add up to the run they split."""
    train, image_size = config.train, config.data.image_size
    sizes, epochs = train.progressive_sizes, train.progressive_epochs
    if not sizes and not epochs:
        return
    # The stages name their sizes and epochs one by one, so the totals cannot be left to the data.
    auto = [name for name, value in (("data.image_size", image_size), ("train.epochs", train.epochs))
            if value == AUTO]
    if auto:
        raise UserError(f"progressive resizing (train.progressive_sizes) needs an explicit "
                        f"{' and '.join(auto)}; 0 means chosen from the data. Set "
                        f"{' '.join('--set ' + name + '=N' for name in auto)}")
    example = "e.g. train.progressive_sizes=[128, 224] and train.progressive_epochs=[10, 10]"
    if len(sizes) != len(epochs):
        raise UserError(f"train.progressive_sizes and train.progressive_epochs need one entry per "
                        f"stage ({example}). Received: {list(sizes)} and {list(epochs)}")
    if min(sizes) < 1 or min(epochs) < 1:
        raise UserError(f"progressive sizes and epochs must be positive. Received: sizes "
                        f"{list(sizes)}, epochs {list(epochs)}")
    if sizes[-1] != image_size:
        raise UserError(f"the last of train.progressive_sizes must be data.image_size="
                        f"{image_size}, the size the model is evaluated and saved at. "
                        f"Received: {list(sizes)}")
    if sum(epochs) != train.epochs:
        raise UserError(f"train.progressive_epochs must add up to train.epochs={train.epochs}, which "
                        f"the learning-rate schedule spans. Received: {list(epochs)} "
                        f"(sum {sum(epochs)}); set train.epochs={sum(epochs)}")


def _check_combinations(config):
    """Raises UserError for settings that contradict each other."""
    train, model = config.train, config.model
    if train.class_weight != "none" and config.data.balanced_sampling:
        raise UserError("train.class_weight=balanced and data.balanced_sampling=true both correct "
                        "the class imbalance, and together over-correct it; use one of them")
    _check_progressive(config)
    transfer = weights_argument(config) is not None
    if transfer and model.init_from:
        raise UserError(f"model.weights={model.weights!r} and model.init_from={model.init_from!r} "
                        f"both set the starting weights; keep one (set model.weights=none to start "
                        f"from the run)")
    if train.fine_tune_epochs or model.fine_tune_blocks:
        if not transfer:
            raise UserError("fine-tuning (train.fine_tune_epochs, model.fine_tune_blocks) follows a "
                            "frozen-backbone phase, which needs pretrained weights: set model.weights "
                            "to imagenet or a backbone weights file, or drop the fine-tune settings")
        if train.fine_tune_epochs < 1 or model.fine_tune_blocks == 0:
            raise UserError(f"fine-tuning needs both train.fine_tune_epochs >= 1 and model.fine_tune_blocks "
                            f"(top blocks to unfreeze, -1 for all). Received: fine_tune_epochs="
                            f"{train.fine_tune_epochs}, fine_tune_blocks={model.fine_tune_blocks}")
        if model.fine_tune_blocks < -1:
            raise UserError(f"model.fine_tune_blocks must be -1 (all) or a number of blocks >= 1. "
                            f"Received: {model.fine_tune_blocks}")
    if train.schedule == "cosine":
        for epochs in (train.epochs, train.fine_tune_epochs):  # each phase runs the schedule anew
            if epochs > 0 and not 0 <= train.warmup_epochs < epochs:
                raise UserError(f"train.warmup_epochs must be at least 0 and fewer than the "
                                f"{epochs} epochs it warms up. Received: {train.warmup_epochs}")


def _check(config):
    """Returns ``config`` if every field is in its range and choices and they fit together; else raises UserError."""
    _check_numbers(config)
    for dotted in CHOICES:
        check_choice(dotted, _value(config, dotted))
    _check_combinations(config)
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
    return _check(_build(Config, values, ""))
