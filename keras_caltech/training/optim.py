"""Optimizers and learning-rate schedules named in configs."""

import keras

from keras_caltech.errors import UserError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step")


def make_schedule(train, steps_per_epoch):
    """Returns the learning rate (a float or a serializable schedule) for a TrainConfig.

    Schedules count optimizer steps, not epochs, so their position is part of the
    optimizer state and survives a save and reload.
    """
    if train.schedule == "constant":
        return train.learning_rate
    if train.schedule == "step":
        # StepLR: the rate is multiplied by gamma every step_epochs epochs.
        boundaries = [steps_per_epoch * train.step_epochs * index
                      for index in range(1, max(1, train.epochs // train.step_epochs) + 1)]
        values = [train.learning_rate * train.step_gamma ** index for index in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    raise UserError(f"unknown train.schedule {train.schedule!r}. Valid schedules: {', '.join(SCHEDULES)}")


def make_optimizer(train, steps_per_epoch):
    """Builds the Keras optimizer a TrainConfig names.

    Raises:
        UserError: unknown optimizer or schedule name.
    """
    learning_rate = make_schedule(train, steps_per_epoch)
    weight_decay = train.weight_decay or None
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=train.momentum, weight_decay=weight_decay)
    raise UserError(f"unknown train.optimizer {train.optimizer!r}. Valid optimizers: {', '.join(OPTIMIZERS)}")
