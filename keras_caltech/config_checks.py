"""What makes a loaded Config valid: the choices of its named fields, its ranges, and
the settings that must agree with each other.

:func:`keras_caltech.config.load_config` calls :func:`check_config` on every config it
builds, so a value outside its range or its choices, or settings that contradict each
other, are refused before any data is read or any run folder exists. What only the data
or the model can tell (a class count, a layer name, the model's smallest input) is
checked where it is known.

The lists of choices live here and are re-exported by ``keras_caltech.config``, from
which the modules that act on a field import them. This module imports nothing of the
project but its errors, so ``config`` stays importable from everywhere.
"""

import dataclasses
import math

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
HEADS = ("pooled", "top")  # model.head: models/pretrained.py
# model.head=top keeps VGG's fc1, trained on the 7 x 7 x 512 feature map of a 224 px image.
TOP_HEAD_IMAGE_SIZE = 224
# train_val_test: select the checkpoint on a validation split, report on an unseen test
# split. train_val: the published reports' protocol, one held-out split for both.
PROTOCOLS = ("train_val_test", "train_val")  # data/splits.py
# Published datasets -> their class folders (data/download.py downloads them).
DATASET_CLASSES = {"caltech256": 257, "caltech101": 102, "tinyimagenet": 200, "cifar100": 100}

# field -> (its valid values, what an error calls them)
CHOICES = {
    "data.normalization": (NORMALIZATIONS, "choices"),
    "data.protocol": (PROTOCOLS, "protocols"),
    "data.cache": (CACHE_MODES + (AUTO_CACHE,), "choices"),
    "train.optimizer": (OPTIMIZERS, "optimizers"),
    "train.schedule": (SCHEDULES, "schedules"),
    "train.class_weight": (CLASS_WEIGHT_MODES, "modes"),
    "train.strategy": (STRATEGIES, "choices"),
    "train.precision": (PRECISIONS, "choices"),
    "eval.tta": (TTA_MODES, "modes"),
    "data.dataset": (("",) + tuple(DATASET_CLASSES), "datasets"),
    "model.head": (HEADS, "heads"),
}

# Values below these would fail deep inside TensorFlow (a batch of 0 images) or train nothing.
_AT_LEAST_ONE = ("data.batch_size", "train.step_epochs")
_AT_LEAST_ZERO = ("data.train_per_class", "data.test_per_class", "data.scan_workers", "augment.resize_crop")
ZERO_MEANS_AUTO = ("data.image_size", "train.epochs")  # AUTO: chosen from the data (training/auto.py)
_FRACTIONS = ("data.test_fraction", "data.val_fraction", "train.momentum", "train.pct_start")  # in [0, 1)
_POSITIVE = ("train.learning_rate", "train.fine_tune_learning_rate", "train.step_gamma")
_UNIT_INTERVAL = ("augment.rand_augment_factor", "augment.random_erasing", "augment.rotation",
                  "augment.translation", "augment.zoom", "augment.shear", "augment.color_jitter")  # in [0, 1]


def _value(config, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def _check_numbers(config):
    """Raises UserError naming the dotted path of a number outside its range."""
    for dotted in _AT_LEAST_ONE + _AT_LEAST_ZERO + ZERO_MEANS_AUTO + _FRACTIONS + _POSITIVE + _UNIT_INTERVAL:
        value = _value(config, dotted)
        if dotted in _AT_LEAST_ONE and value < 1:
            raise UserError(f"{dotted} must be at least 1. Received: {value}")
        if dotted in ZERO_MEANS_AUTO and value < AUTO:
            raise UserError(f"{dotted} must be at least 1, or 0 to choose it from the data. Received: {value}")
        if dotted in _AT_LEAST_ZERO and value < 0:
            raise UserError(f"{dotted} must be at least 0. Received: {value}")
        if dotted in _FRACTIONS and not 0 <= value < 1:
            raise UserError(f"{dotted} must be a fraction in [0, 1). Received: {value}")
        if dotted in _POSITIVE and not value > 0:
            raise UserError(f"{dotted} must be > 0. Received: {value}")
        if dotted in _UNIT_INTERVAL and not 0.0 <= value <= 1.0:
            raise UserError(f"{dotted} must be between 0 and 1. Received: {value}")
    for dotted in ("train.seed", "data.split_seed", "data.synthetic_seed"):  # NumPy's seeds: 0 to 2**32 - 1
        if not 0 <= _value(config, dotted) < 2 ** 32:
            raise UserError(f"{dotted} must be between 0 and {2 ** 32 - 1}. Received: {_value(config, dotted)}")
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


def _check_finite(config):
    """Raises UserError naming a NaN or infinite number, which every range check would let through."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        if not dataclasses.is_dataclass(values):
            continue
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if any(isinstance(number, float) and not math.isfinite(number)
                   for number in (value if isinstance(value, tuple) else (value,))):
                raise UserError(f"{section.name}.{field.name} must be a finite number. Received: {value}")


def _check_folder_names(config):
    """Raises UserError for a run or export name that is not one plain folder name.

    ``name`` becomes ``runs/NAME-DATE-TIME`` and ``export.name`` ``saved_models/NAME``:
    a separator, ``..`` or a control character would put them elsewhere or break them.
    """
    for dotted, value in (("name", config.name), ("export.name", config.export.name)):
        if value in (".", "..") or any(char in "/\\" or not char.isprintable() for char in value):
            raise UserError(f"{dotted} becomes a folder name, so it cannot hold a path separator, "
                            f"'..' or a control character. Received: {value!r}")


def check_choice(dotted, value):
    """Returns ``value`` if it is one of field ``dotted``'s :data:`CHOICES`; else raises UserError listing them.

    Also checks a command-line flag that stands in for a field: ``--tta`` of
    ``evaluate`` and ``ensemble`` is an ``eval.tta``.
    """
    choices, kind = CHOICES[dotted]
    if value not in choices:
        name = "TTA mode" if dotted == "eval.tta" else dotted  # the name --tta's users know it by
        shown = ", ".join(repr(choice) if choice == "" else choice for choice in choices)  # '' shows as ''
        raise UserError(f"unknown {name} {value!r}. Valid {kind}: {shown}")
    return value


def weights_argument(config):
    """``model.weights`` as ``create_model`` takes it: None, "imagenet" or a file path.

    Here rather than in ``config`` because the combination checks ask it too (are
    there pretrained weights to fine-tune?); ``config`` re-exports it.
    """
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


def _check_top_head(config):
    """Raises UserError for a ``model.head=top`` run at another input size than its dense layers take.

    Which architectures have that head is the model registry's to say, when it builds.
    """
    if config.model.head != "top":
        return
    image_size, sizes = config.data.image_size, config.train.progressive_sizes
    if image_size != TOP_HEAD_IMAGE_SIZE:
        shown = f"{image_size} (chosen from the data)" if image_size == AUTO else str(image_size)
        raise UserError(f"model.head=top keeps VGG's ImageNet classifier, whose fc1 takes the "
                        f"7 x 7 x 512 feature map of a {TOP_HEAD_IMAGE_SIZE} px image only. "
                        f"Received: data.image_size={shown}. Set data.image_size="
                        f"{TOP_HEAD_IMAGE_SIZE}, or model.head=pooled for any size")
    if any(size != TOP_HEAD_IMAGE_SIZE for size in sizes):
        raise UserError(f"model.head=top takes {TOP_HEAD_IMAGE_SIZE} px images only, so it cannot "
                        f"train at other sizes first. Received: train.progressive_sizes="
                        f"{list(sizes)}. Drop train.progressive_sizes, or set model.head=pooled")


def _check_combinations(config):
    """Raises UserError for settings that contradict each other."""
    train, model = config.train, config.model
    if train.class_weight != "none" and config.data.balanced_sampling:
        raise UserError("train.class_weight=balanced and data.balanced_sampling=true both correct "
                        "the class imbalance, and together over-correct it; use one of them")
    _check_progressive(config)
    _check_top_head(config)
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


def check_config(config):
    """Returns ``config`` if every field is in its range and choices and they fit together.

    Args:
        config: a ``keras_caltech.config.Config``, as built from defaults, YAML and overrides.

    Returns:
        ``config`` itself, unchanged.

    Raises:
        UserError: the first value out of range or not among its choices, or the first
            pair of settings that contradict each other, named by its dotted path.
    """
    _check_finite(config)
    _check_numbers(config)
    _check_folder_names(config)
    for dotted in CHOICES:
        check_choice(dotted, _value(config, dotted))
    _check_combinations(config)
    return config
