"""A dry run: the model a config describes, built and described, with nothing trained.

``python train.py --dry-run`` (and ``--chain FOLDER --dry-run``) checks a config as far as
it can without training: the architecture at its input size, the phases, the
augmentation and the schedule, and another run's weights when ``model.init_from`` names
them. A config for a published dataset needs no copy of it: the class count comes from
the config.
"""

from keras_caltech.config import DATASET_CLASSES
from keras_caltech.data.augment import build_augmenter
from keras_caltech.data.scan import IMAGE_EXTENSIONS, discover_classes
from keras_caltech.errors import UserError
from keras_caltech.models import get_model_entry
from keras_caltech.training import auto, phases
from keras_caltech.training.optim import make_optimizer
from keras_caltech.training.trainer import build_model, choose_from_split, dataset_root

# The schedule is checked at a typical epoch length, without scanning the data.
DRY_RUN_STEPS_PER_EPOCH = 100


def dry_run(config, log=print):
    """Builds the model the config describes, prints its summary and parameter count; trains nothing.

    Pretrained weights are never loaded or downloaded: the model is built with
    ``weights=None``, which has the same layers and parameter count. Another run's
    weights (``model.init_from``, a local file) are loaded, so a wrong path or
    architecture fails here. The phases, augmentation, loss and schedule settings are
    checked as training would check them.
    """
    entry = get_model_entry(config.model.name)
    if config.data.dataset and not config.data.root:  # a config for a published dataset, not downloaded here
        return _dry_run_without_data(config, entry, log)
    root = dataset_root(config.data)
    class_names, _ = discover_classes(root, config.data.include_classes, config.data.exclude_classes)
    # Settings left to the data, chosen as a run chooses them, from the split of the
    # files as listed (a dry run decodes nothing, so files a scan would refuse count).
    files = auto.listed_files(root, class_names, IMAGE_EXTENSIONS)
    try:
        config, _ = choose_from_split(config, root, files, class_names, log)
    except UserError:  # too few images to split (a model checked on empty class folders): all of them
        config = auto.resolve_auto(config, [root / path for path, _ in files], 0, entry, log=log)
    return _build_and_describe(config, len(class_names), log)


def _dry_run_without_data(config, entry, log):
    """A dry run of a config for a published dataset (``data.dataset``) with no copy of it at hand.

    The class count comes from the config: its ``include_classes``, else the dataset's
    class folders less its ``exclude_classes``; settings left to the data take typical values.
    """
    data = config.data
    total = DATASET_CLASSES[data.dataset]
    num_classes = len(data.include_classes) or total - len(data.exclude_classes)
    log(f"no --data: {num_classes} classes from the config ({data.dataset} has {total} class folders; "
        f"{len(data.include_classes)} included, {len(data.exclude_classes)} excluded)")
    return _build_and_describe(auto.stand_in(config, entry.default_image_size), num_classes, log)


def _build_and_describe(config, num_classes, log):
    """Builds the config's model for ``num_classes``, checks its phases, prints its summary; returns it."""
    plan = phases.plan_phases(config)
    build_augmenter(config.augment, config.data.image_size)
    make_optimizer(config.train, DRY_RUN_STEPS_PER_EPOCH)
    model = build_model(config, num_classes)
    phases.check_fine_tune_blocks(model, config)
    if config.model.init_from:
        phases.initialize_from_run(model, config.model.init_from, log)
    model.summary(print_fn=log)
    log(f"{config.model.name}: {model.count_params():,} parameters, {num_classes} classes, "
        f"{config.data.image_size} px input")
    if phases.weights_argument(config) is not None:
        log(f"model.weights={config.model.weights} not loaded: a dry run never reads or downloads weights")
    log("phases: " + "; ".join(f"{phase.name} {phase.last_epoch - phase.first_epoch} epoch(s) at "
                               f"{phase.image_size} px" for phase in plan))
    return model
