"""Step-based learning-rate schedules used by the published Caltech runs.

- :class:`OneCycle`: PyTorch's ``OneCycleLR`` (seed reports 000 and 002), which has
  no Keras equivalent; written out here and checked against its formula in the tests.
- :class:`WarmupCosine`: linear warm-up, then cosine decay; Keras's ``CosineDecay``
  with its warm-up, under the names the configs use.
- :class:`StepDecay`: PyTorch's ``StepLR`` (multiply by ``gamma`` every
  ``step_epochs`` epochs); Keras's staircase ``ExponentialDecay``, counted in epochs.

Each is a ``keras.optimizers.schedules.LearningRateSchedule`` called with the
optimizer's step counter (0 for the first update), and registered as serializable, so
an optimizer using it is saved and reloaded with a ``.keras`` model.
"""

import math

import keras
from keras import ops

from keras_caltech.errors import UserError

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def _require_positive(**values):
    """Raises UserError naming the first of ``values`` that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise UserError(f"{name} must be > 0. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="keras_caltech")
class OneCycle(_Schedule):
    """One-cycle policy: cosine warm-up to a peak, then cosine annealing to almost zero.

    Equal to PyTorch's ``OneCycleLR(max_lr=peak_learning_rate, total_steps=total_steps,
    pct_start, div_factor, final_div_factor, anneal_strategy="cos",
    three_phase=False)`` at every step (the arguments keep PyTorch's names, so the
    reports' settings carry over): with ``start = peak / div_factor`` and
    ``end = start / final_div_factor``, the rate rises from ``start`` at step 0 to the
    peak at step ``pct_start * total_steps - 1``, then falls to ``end`` at step
    ``total_steps - 1``; each phase follows ``b + (a - b) * (1 + cos(pi * t)) / 2`` from
    ``a`` to ``b`` as its progress ``t`` goes 0 -> 1. After the run's last step,
    ``total_steps - 1``, the rate stays at ``end`` (PyTorch extrapolates one step, then
    raises an error).

    Args:
        peak_learning_rate: the highest rate, > 0 (PyTorch's ``max_lr``).
        total_steps: optimizer steps in the whole run (epochs * steps per epoch).
        pct_start: fraction of the steps spent warming up, in (0, 1).
        div_factor: ``peak / starting rate``.
        final_div_factor: ``starting rate / final rate``.
        name: name of the schedule.
    """

    def __init__(self, peak_learning_rate, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4, name="OneCycle"):
        _require_positive(peak_learning_rate=peak_learning_rate, total_steps=total_steps,
                          div_factor=div_factor, final_div_factor=final_div_factor)
        if not 0 < pct_start < 1:
            raise UserError(f"pct_start must be in (0, 1). Received: pct_start={pct_start!r}")
        # PyTorch's phase boundary; the warm-up must cover at least one step past 0,
        # and the annealing phase at least one step too, or a phase divides by zero.
        if not 0 < pct_start * total_steps - 1 < total_steps - 1:
            raise UserError(
                f"OneCycle needs pct_start * total_steps - 1 between 0 and total_steps - 1. "
                f"Received: pct_start={pct_start}, total_steps={total_steps}; use more steps "
                f"or another pct_start.")
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.name = name

    def __call__(self, step):
        start = self.peak_learning_rate / self.div_factor
        end = start / self.final_div_factor
        peak_step = self.pct_start * self.total_steps - 1
        last_step = self.total_steps - 1
        step = ops.minimum(ops.cast(step, "float32"), last_step)

        def cosine(first, last, progress):
            # (1 + cos(pi t)) / 2 written as cos(pi t / 2) ** 2: the same value, without
            # float32 cancellation near t = 1, where the rate approaches its floor.
            return last + (first - last) * ops.square(ops.cos(math.pi / 2.0 * progress))

        rising = cosine(start, self.peak_learning_rate, step / peak_step)
        falling = cosine(self.peak_learning_rate, end, (step - peak_step) / (last_step - peak_step))
        return ops.where(step <= peak_step, rising, falling)

    def get_config(self):
        return dict(peak_learning_rate=self.peak_learning_rate, total_steps=self.total_steps,
                    pct_start=self.pct_start, div_factor=self.div_factor,
                    final_div_factor=self.final_div_factor, name=self.name)


@keras.saving.register_keras_serializable(package="keras_caltech")
class WarmupCosine(keras.optimizers.schedules.CosineDecay):
    """Linear warm-up from 0 to a peak, then cosine decay to a final rate.

    ``peak * step / warmup_steps`` for ``step < warmup_steps``, then
    ``final + (peak - final) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, and ``final`` after
    ``total_steps``. It is Keras's ``CosineDecay`` warm-up, reused rather than rewritten.

    Args:
        peak_learning_rate: the rate at the end of warm-up, > 0.
        total_steps: optimizer steps in the whole run, warm-up included.
        warmup_steps: steps of linear warm-up, 0 <= warmup_steps < total_steps.
        final_learning_rate: the rate reached at ``total_steps``, 0 <= final <= peak.
        name: name of the schedule.
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_steps, final_learning_rate=0.0,
                 name="WarmupCosine"):
        _require_positive(peak_learning_rate=peak_learning_rate, total_steps=total_steps)
        if not 0 <= warmup_steps < total_steps:
            raise UserError(f"warmup_steps must be in [0, total_steps={total_steps}). "
                            f"Received: warmup_steps={warmup_steps}")
        if not 0 <= final_learning_rate <= peak_learning_rate:
            raise UserError(f"final_learning_rate must be in [0, peak_learning_rate="
                            f"{peak_learning_rate}]. Received: {final_learning_rate}")
        super().__init__(initial_learning_rate=0.0, decay_steps=total_steps - warmup_steps,
                         alpha=final_learning_rate / peak_learning_rate, name=name,
                         warmup_target=float(peak_learning_rate), warmup_steps=warmup_steps)
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.final_learning_rate = float(final_learning_rate)

    def get_config(self):
        return dict(peak_learning_rate=self.peak_learning_rate, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, final_learning_rate=self.final_learning_rate,
                    name=self.name)


@keras.saving.register_keras_serializable(package="keras_caltech")
class StepDecay(keras.optimizers.schedules.ExponentialDecay):
    """Multiplies the rate by ``gamma`` every ``step_epochs`` epochs, like PyTorch's StepLR.

    ``initial_learning_rate * gamma ** floor(step / (steps_per_epoch * step_epochs))``:
    Keras's staircase ``ExponentialDecay``, with its period given in epochs.

    Args:
        initial_learning_rate: the rate for the first ``step_epochs`` epochs, > 0.
        steps_per_epoch: optimizer steps per epoch (batches per epoch), > 0.
        step_epochs: epochs between two decays, > 0 (StepLR's ``step_size``).
        gamma: the factor applied at each decay, > 0 (0.1 in the reports).
        name: name of the schedule.
    """

    def __init__(self, initial_learning_rate, steps_per_epoch, step_epochs, gamma,
                 name="StepDecay"):
        _require_positive(initial_learning_rate=initial_learning_rate,
                          steps_per_epoch=steps_per_epoch, step_epochs=step_epochs, gamma=gamma)
        super().__init__(float(initial_learning_rate), decay_steps=steps_per_epoch * step_epochs,
                         decay_rate=float(gamma), staircase=True, name=name)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_epochs = int(step_epochs)
        self.gamma = float(gamma)

    def get_config(self):
        return dict(initial_learning_rate=self.initial_learning_rate,
                    steps_per_epoch=self.steps_per_epoch, step_epochs=self.step_epochs,
                    gamma=self.gamma, name=self.name)
