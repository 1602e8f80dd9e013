"""Optimizers and learning-rate schedules named in configs.

``train.weight_decay`` means what it meant in the reports' framework, PyTorch:

- ``sgd`` and ``adam``: an L2 term, ``weight_decay * w``, added to every gradient
  before the update, so it passes through momentum (and Adam's scaling). Keras's own
  ``weight_decay`` argument is decoupled for every optimizer; with SGD momentum 0.9 it
  would decay about ten times less than the reports' ``weight_decay=1e-4`` did. Hence
  :class:`SGDWithL2` and :class:`AdamWithL2`.
- ``adamw``: decoupled decay, ``w -= learning_rate * weight_decay * w`` each step,
  which is Keras's ``AdamW`` and PyTorch's ``AdamW`` alike.

Like PyTorch, the decay applies to every trainable variable (biases and BatchNorm too).
"""

import keras

from keras_caltech.config import OPTIMIZERS, SCHEDULES
from keras_caltech.errors import UserError
from keras_caltech.training.schedules import OneCycle, StepDecay, WarmupCosine


def make_schedule(train, steps_per_epoch, *, epochs=None, learning_rate=None):
    """Returns the learning rate (a float or a serializable schedule) for a TrainConfig.

    Schedules count optimizer steps, not epochs, so their position is part of the
    optimizer state and survives a save and reload.

    Args:
        train: the config's ``train`` section.
        steps_per_epoch: optimizer steps (batches) per epoch.
        epochs: epochs the schedule spans; default ``train.epochs`` (a fine-tuning
            phase passes its own).
        learning_rate: the starting rate (the peak for onecycle and cosine); default
            ``train.learning_rate``.

    Raises:
        UserError: a warm-up that rounds to all of the steps (the config's names and
            ranges were checked when it was loaded).
    """
    epochs = train.epochs if epochs is None else epochs
    rate = train.learning_rate if learning_rate is None else learning_rate
    total_steps = epochs * steps_per_epoch
    if train.schedule == "constant":
        return rate
    if train.schedule == "step":
        return StepDecay(rate, steps_per_epoch, train.step_epochs, train.step_gamma)
    if train.schedule == "onecycle":
        # A run of a few steps (a short --set train.epochs on a small dataset) still rises
        # and falls: OneCycle needs its peak after the first step and before the last.
        if total_steps < 2:
            return rate
        return OneCycle(rate, total_steps, pct_start=max(train.pct_start, min(1.5 / total_steps, 0.75)))
    if train.schedule == "cosine":
        warmup_steps = round(train.warmup_epochs * steps_per_epoch)
        if not 0 <= warmup_steps < total_steps:
            raise UserError(f"train.warmup_epochs must be at least 0 and fewer than the "
                            f"{epochs} epochs it warms up. Received: {train.warmup_epochs}")
        return WarmupCosine(rate, total_steps, warmup_steps)
    raise ValueError(f"make_schedule has no case for train.schedule {train.schedule!r} "
                     f"(config.SCHEDULES: {SCHEDULES})")


def make_optimizer(train, steps_per_epoch, *, epochs=None, learning_rate=None):
    """Builds the Keras optimizer a TrainConfig names, with its schedule.

    Args:
        train: the config's ``train`` section.
        steps_per_epoch: optimizer steps (batches) per epoch.
        epochs: epochs the schedule spans; default ``train.epochs``.
        learning_rate: the starting or peak rate; default ``train.learning_rate``.

    Raises:
        UserError: see :func:`make_schedule`.
    """
    rate = make_schedule(train, steps_per_epoch, epochs=epochs, learning_rate=learning_rate)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return AdamWithL2(rate, l2=train.weight_decay)
    if train.optimizer == "sgd":
        return SGDWithL2(rate, momentum=train.momentum, nesterov=train.nesterov, l2=train.weight_decay)
    raise ValueError(f"make_optimizer has no case for train.optimizer {train.optimizer!r} "
                     f"(config.OPTIMIZERS: {OPTIMIZERS})")


def _with_l2(optimizer, gradient, variable):
    """``gradient + l2 * variable``: PyTorch's coupled weight decay.

    Added in ``update_step``, which receives the gradient after it has been summed over
    the replicas of a tf.distribute strategy, so the term counts once, not once per
    replica (each replica's share of the loss is scaled by 1/replicas; this term is not).
    """
    if not optimizer.l2:
        return gradient
    return gradient + optimizer.l2 * keras.ops.cast(variable, gradient.dtype)


class _L2GradientTerm:
    """Mixin for a Keras optimizer: weight decay as an ``l2 * w`` gradient term, as PyTorch's.

    Keras' own ``weight_decay`` shrinks the weights directly (decoupled, AdamW-style);
    PyTorch's SGD and Adam add the term to the gradient, before momentum, which is what
    the published recipes ran.

    Args:
        l2: the factor of the ``l2 * w`` term added to each gradient, >= 0.
        *args, **kwargs: the optimizer's own arguments (learning rate, momentum, ...).
    """

    def __init__(self, *args, l2=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        return super().update_step(_with_l2(self, gradient, variable), variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package="keras_caltech")
class SGDWithL2(_L2GradientTerm, keras.optimizers.SGD):
    """Keras SGD whose weight decay is an L2 gradient term, as PyTorch's ``SGD(weight_decay)``."""


@keras.saving.register_keras_serializable(package="keras_caltech")
class AdamWithL2(_L2GradientTerm, keras.optimizers.Adam):
    """Keras Adam whose weight decay is an L2 gradient term, as PyTorch's ``Adam(weight_decay)``."""
