"""A run as a sequence of phases: progressive resizing, frozen-backbone transfer, fine-tuning.

A plain run is one phase. A config can ask for more:

- **Pretrained transfer** (``model.weights`` = imagenet or a backbone weights file):
  phase 1 trains the new head on a frozen backbone for ``train.epochs`` (frozen
  BatchNorm layers run in inference mode, see ``models.transfer``); then, with
  ``train.fine_tune_epochs`` and ``model.fine_tune_blocks``, phase 2 unfreezes the top
  blocks and trains at ``train.fine_tune_learning_rate``, with a new optimizer and a
  new run of the same schedule (Keras reads ``trainable`` when compiling).
- **Another run's weights** (``model.init_from``, ``--init-from``): the first model
  starts from that run's ``best.keras``, with a fresh head when the class count differs,
  and every layer trains (progressive pretraining, seed report 004).
- **Progressive resizing** (``train.progressive_sizes`` / ``progressive_epochs``):
  phase 1 is split into stages at growing input sizes, ending at ``data.image_size``.

Progressive resizing rebuilds the model at each new size and copies the weights by
layer name (``models.transfer.load_weights_from``), rather than building models with
``None`` spatial dimensions: the registry's contract is a fixed input size (exported
serving signatures and Grad-CAM rely on it), and models whose head flattens a feature
map (the small CNNs, VGG-5) cannot take another size at all, which the rebuild detects
before training. The stages share one optimizer schedule spanning ``train.epochs``, and
each stage's optimizer continues from the previous one's state (step count, momentum),
so a OneCycle or cosine schedule runs once over the whole phase. Only the last stage,
at the final size, may write ``best.keras``: the test split is evaluated at that size.
"""

import dataclasses
import math
import pathlib

from keras_caltech.config import weights_argument
from keras_caltech.errors import UserError
from keras_caltech.models import get_model_entry
from keras_caltech.models.registry import check_weights
from keras_caltech.models.loading import load_model_safely
from keras_caltech.models.transfer import (backbone_blocks, freeze_backbone, load_weights_from,
                                           unfreeze_top_blocks)
from keras_caltech.training.callbacks import BestCheckpoint
from keras_caltech.training.optim import make_optimizer
from keras_caltech.training.recipes import loss_and_metrics
from keras_caltech.runs import BEST_MODEL

ALL_LAYERS = "all"
HEAD_ONLY = "head"


@dataclasses.dataclass(frozen=True)
class Phase:
    """One ``fit`` call of a run.

    Attributes:
        name: for logs, e.g. "train", "head", "stage 1 of 2", "fine-tune".
        config: the run's Config as this phase trains with it (a progressive stage has
            its own ``data.image_size`` and scaled ``augment.resize_crop``).
        first_epoch: 0-based epoch the phase starts at (``fit``'s ``initial_epoch``).
        last_epoch: the epoch count reached at its end (``fit``'s ``epochs``).
        trainable: ``"all"``, ``"head"`` (frozen backbone), or the number of top
            backbone blocks to unfreeze (-1: all of them).
        learning_rate: the starting or peak rate of its schedule.
        schedule_epochs: epochs its schedule spans (a whole phase, across stages).
        continues_optimizer: start from the previous phase's optimizer state.
        saves_best: whether it may write ``best.keras``.
    """

    name: str
    config: object
    first_epoch: int
    last_epoch: int
    trainable: object
    learning_rate: float
    schedule_epochs: int
    continues_optimizer: bool
    saves_best: bool

    @property
    def image_size(self):
        return self.config.data.image_size


def _stage_config(config, image_size):
    """``config`` at another input size; a resize-then-crop scales with it."""
    final = config.data.image_size
    resize_crop = round(config.augment.resize_crop * image_size / final) if config.augment.resize_crop else 0
    return dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=image_size),
                               augment=dataclasses.replace(config.augment, resize_crop=resize_crop))


def _stages(config):
    """[(image size, epochs)] of phase 1: one stage, or the progressive ones.

    ``load_config`` checked that the progressive stages end at ``data.image_size`` and
    add up to ``train.epochs``.
    """
    train = config.train
    if not train.progressive_sizes:
        return [(config.data.image_size, train.epochs)]
    return list(zip(train.progressive_sizes, train.progressive_epochs))


def plan_phases(config):
    """Returns the phases of a run.

    How the phase settings fit together (fine-tuning needs a pretrained start,
    progressive stages end at the model's size, ...) was checked by ``load_config``.

    Args:
        config: a resolved Config (no setting left to the data).

    Returns:
        A list of :class:`Phase`, in training order.

    Raises:
        UserError: pretrained weights for a model the registry trains from scratch.
    """
    train, model = config.train, config.model
    if train.epochs < 1:
        raise UserError(f"train.epochs must be >= 1. Received: {train.epochs}")
    transfer = weights_argument(config) is not None
    check_weights(model.name, weights_argument(config))  # the registry knows which models are pretrained
    stages = _stages(config)
    phases, first_epoch = [], 0
    for index, (image_size, epochs) in enumerate(stages):
        name = HEAD_ONLY if transfer else "train"
        if len(stages) > 1:
            name += f", stage {index + 1} of {len(stages)}"
        phases.append(Phase(
            name=name, config=_stage_config(config, image_size), first_epoch=first_epoch,
            last_epoch=first_epoch + epochs, trainable=HEAD_ONLY if transfer else ALL_LAYERS,
            learning_rate=train.learning_rate, schedule_epochs=train.epochs,
            continues_optimizer=index > 0, saves_best=index == len(stages) - 1))
        first_epoch += epochs

    if train.fine_tune_epochs:  # load_config checked it comes with fine_tune_blocks and pretrained weights
        phases.append(Phase(
            name="fine-tune", config=config, first_epoch=first_epoch,
            last_epoch=first_epoch + train.fine_tune_epochs, trainable=model.fine_tune_blocks,
            learning_rate=train.fine_tune_learning_rate, schedule_epochs=train.fine_tune_epochs,
            continues_optimizer=False, saves_best=True))
    return phases


def check_fine_tune_blocks(model, config):
    """Raises UserError if ``model.fine_tune_blocks`` does not fit the built model's blocks."""
    requested = config.model.fine_tune_blocks
    if requested == 0:
        return
    blocks = backbone_blocks(model)  # raises for a model without block structure
    if requested > len(blocks):
        raise UserError(f"model.fine_tune_blocks={requested}, but {model.name} has {len(blocks)} blocks "
                        f"({next(iter(blocks))} ... {list(blocks)[-1]}); use 1 to {len(blocks)}, or -1 "
                        f"for all")


def callbacks_for(phase, callbacks):
    """The callbacks a phase runs with: a stage below the final size writes no best.keras."""
    if phase.saves_best:
        return list(callbacks)
    return [callback for callback in callbacks if not isinstance(callback, BestCheckpoint)]


def initialize_from_run(model, source, log=print):
    """Copies the weights of another run's model into ``model`` (``model.init_from``).

    Args:
        model: the new model, changed in place.
        source: a run folder (its best.keras is used) or a ``.keras`` file.
        log: where the one-line report goes.

    Raises:
        UserError: no model there, another architecture, or weights of other shapes.
    """
    path = pathlib.Path(source)
    if path.is_dir():
        path = path / BEST_MODEL
    other = load_model_safely(path)
    if other.name != model.name:
        raise UserError(f"model.init_from {str(path)!r} holds a {other.name!r} model, but this run "
                        f"builds {model.name!r}; set model.name={other.name} or start from a "
                        f"{model.name} run")
    try:
        kept = load_weights_from(model, other)
    except UserError as error:
        if tuple(other.input_shape) != tuple(model.input_shape):
            raise UserError(f"{error} ({other.name} was trained at {other.input_shape[1]} px and this "
                            f"run uses {model.input_shape[1]} px; a head that flattens a feature map "
                            f"only transfers at the same size)") from error
        raise
    head = (f"; new logits for {model.output_shape[-1]} classes (it had {other.output_shape[-1]})"
            if kept else "")
    log(f"initialized {model.name} from {path}{head}")


class PhaseRunner:
    """Hands the trainer the compiled model of each phase in turn.

    Args:
        config: the run's Config.
        build: ``build(config, weights) -> model``: ``create_model`` for the config's
            architecture, data.image_size and normalization.
        num_classes: number of classes.
        steps_per_epoch: optimizer steps per epoch.
        log: where progress lines go.

    Attributes:
        plan: the phases, from :func:`plan_phases`.
        model: the model of the current phase (None before the first).
    """

    def __init__(self, config, build, num_classes, steps_per_epoch, log=print):
        self.config = config
        self.plan = plan_phases(config)
        self.model = None
        self._build = build
        self._num_classes = num_classes
        self._steps_per_epoch = steps_per_epoch
        self._log = log

    @property
    def total_epochs(self):
        return self.plan[-1].last_epoch

    def enter(self, phase):
        """Returns ``phase``'s model: built or resized, layers frozen as planned, compiled."""
        previous = self.model
        if previous is None:
            model = self._first_model(phase)
        elif previous.input_shape[1] != phase.image_size:
            model = self._build(phase.config, None)
            load_weights_from(model, previous)  # same architecture: copies every layer
        else:
            model = previous
        if phase.trainable == HEAD_ONLY:
            freeze_backbone(model)
        elif phase.trainable != ALL_LAYERS:
            num_blocks = len(backbone_blocks(model)) if phase.trainable == -1 else phase.trainable
            unfreeze_top_blocks(model, num_blocks)

        optimizer = make_optimizer(phase.config.train, self._steps_per_epoch, epochs=phase.schedule_epochs,
                                   learning_rate=phase.learning_rate)
        if phase.continues_optimizer and previous is not None:
            _continue_optimizer(optimizer, previous.optimizer, model)
        loss, metrics = loss_and_metrics(phase.config, self._num_classes)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        self.model = model
        trainable = sum(math.prod(weight.shape) for weight in model.trainable_weights)
        self._log(f"phase {phase.name}: epochs {phase.first_epoch + 1}-{phase.last_epoch} of "
                  f"{self.total_epochs} at {phase.image_size} px, learning rate {phase.learning_rate:g} "
                  f"({self.config.train.schedule}); {trainable:,} of {model.count_params():,} "
                  f"parameters trainable")
        return model

    def _first_model(self, phase):
        """Builds the first model with its starting weights, and checks the later phases fit it."""
        config = self.config
        weights = weights_argument(config)
        model = self._build(phase.config, weights)
        if config.model.init_from:
            initialize_from_run(model, config.model.init_from, self._log)
        elif weights is None and get_model_entry(config.model.name).pretrained:
            self._log(f"note: {config.model.name} starts from random weights (model.weights=none); "
                      f"set model.weights=imagenet to transfer")
        check_fine_tune_blocks(model, config)
        if phase.image_size != config.data.image_size:
            # Fail now, not after the first stage, if the weights depend on the input size.
            final = self._build(config, None)
            shapes = {layer.name: [tuple(weight.shape) for weight in layer.weights] for layer in model.layers}
            for layer in final.layers:
                final_shapes = [tuple(weight.shape) for weight in layer.weights]
                if layer.name in shapes and shapes[layer.name] != final_shapes:
                    raise UserError(
                        f"progressive resizing needs a model whose weights do not depend on the input "
                        f"size; {config.model.name}'s layer {layer.name!r} has weights "
                        f"{shapes[layer.name]} at {phase.image_size} px but {final_shapes} at "
                        f"{config.data.image_size} px. Drop train.progressive_sizes or pick a model "
                        f"with a pooled head")
        return model


def _continue_optimizer(optimizer, previous, model):
    """Starts ``optimizer`` from ``previous``'s state: step count and per-weight slots.

    Both were made by the same factory for models of one architecture, so their
    variables (iterations, then momentums or Adam moments per trainable weight, in the
    models' layer order) correspond one to one.
    """
    optimizer.build(model.trainable_variables)
    # Under mixed_float16, compile wrapped the previous optimizer in a LossScaleOptimizer.
    previous = getattr(previous, "inner_optimizer", previous)
    pairs = list(zip(optimizer.variables, previous.variables))
    if len(optimizer.variables) != len(previous.variables) or any(
            tuple(new.shape) != tuple(old.shape) for new, old in pairs):
        raise RuntimeError("optimizer state does not carry over between progressive stages: "
                           "the stages' models differ")
    for new, old in pairs:
        new.assign(old)
