"""The learning-rate schedules follow their formulas at every step and survive saving.

Each schedule is compared with an independent, plain-Python statement of its formula
over whole runs. For OneCycle that statement follows PyTorch's ``OneCycleLR.get_lr``
(phases with ``end_step`` boundaries, cosine annealing) as published in its source.

Run: python -m pytest tests/test_schedules.py
"""

import math
import re

import keras
import numpy as np
import pytest

from keras_caltech.errors import UserError
from keras_caltech.training.schedules import OneCycle, StepDecay, WarmupCosine


def rates(schedule, steps):
    """The schedule's learning rate at each of ``steps``, as float64 NumPy values."""
    return np.array([float(schedule(step)) for step in steps])


def one_cycle_like_pytorch(step, peak, total_steps, pct_start, div_factor, final_div_factor):
    """PyTorch OneCycleLR (anneal_strategy="cos", three_phase=False) at ``last_epoch=step``."""
    initial = peak / div_factor
    minimum = initial / final_div_factor
    phases = [(float(pct_start * total_steps) - 1, initial, peak),
              (total_steps - 1, peak, minimum)]
    start_step = 0.0
    for index, (end_step, start_rate, end_rate) in enumerate(phases):
        if step <= end_step or index == len(phases) - 1:
            progress = (step - start_step) / (end_step - start_step)
            return end_rate + (start_rate - end_rate) / 2.0 * (math.cos(math.pi * progress) + 1)
        start_step = end_step


@pytest.mark.parametrize("peak, total_steps, pct_start, div_factor, final_div_factor", [
    (0.1, 100, 0.3, 25.0, 1e4),   # seed report 000: peak 0.1, pct_start 0.3
    (0.01, 37, 0.25, 10.0, 100.0),  # a fractional phase boundary (8.25)
    (3e-4, 1000, 0.1, 25.0, 1e4),
])
def test_one_cycle_equals_pytorchs_formula_at_every_step_of_the_run(
        peak, total_steps, pct_start, div_factor, final_div_factor):
    schedule = OneCycle(peak, total_steps, pct_start, div_factor, final_div_factor)
    steps = range(total_steps)
    expected = [one_cycle_like_pytorch(step, peak, total_steps, pct_start, div_factor,
                                       final_div_factor) for step in steps]
    np.testing.assert_allclose(rates(schedule, steps), expected, rtol=1e-5, atol=1e-12)


def test_one_cycle_starts_low_peaks_at_its_boundary_and_ends_at_the_floor():
    schedule = OneCycle(0.1, total_steps=100, pct_start=0.3)  # peak at step 29
    start, peak, end = rates(schedule, [0, 29, 99])
    assert start == pytest.approx(0.1 / 25)
    assert peak == pytest.approx(0.1)
    assert end == pytest.approx(0.1 / 25 / 1e4)
    assert np.all(np.diff(rates(schedule, range(30))) > 0)
    assert np.all(np.diff(rates(schedule, range(29, 100))) < 0)
    np.testing.assert_allclose(rates(schedule, [100, 150]), end)  # stays at the floor


def test_warmup_cosine_rises_linearly_then_follows_the_cosine_to_its_final_rate():
    peak, final, total_steps, warmup_steps = 0.4, 0.01, 50, 10
    schedule = WarmupCosine(peak, total_steps, warmup_steps, final_learning_rate=final)
    steps = range(total_steps + 5)
    expected = [peak * step / warmup_steps if step < warmup_steps else
                final + (peak - final) * 0.5 * (1 + math.cos(
                    math.pi * min(step - warmup_steps, total_steps - warmup_steps)
                    / (total_steps - warmup_steps)))
                for step in steps]
    np.testing.assert_allclose(rates(schedule, steps), expected, rtol=1e-5, atol=1e-9)


def test_warmup_cosine_without_warmup_starts_at_its_peak():
    schedule = WarmupCosine(0.1, total_steps=20, warmup_steps=0)
    assert rates(schedule, [0])[0] == pytest.approx(0.1)
    assert rates(schedule, [20])[0] == pytest.approx(0.0, abs=1e-9)


def test_step_decay_multiplies_by_gamma_every_step_epochs_epochs():
    schedule = StepDecay(0.01, steps_per_epoch=7, step_epochs=10, gamma=0.1)
    steps = range(0, 7 * 35, 3)
    expected = [0.01 * 0.1 ** (step // 70) for step in steps]
    np.testing.assert_allclose(rates(schedule, steps), expected, rtol=1e-5)
    assert rates(schedule, [69, 70])[1] == pytest.approx(rates(schedule, [69])[0] * 0.1)


@pytest.mark.parametrize("schedule", [
    OneCycle(0.1, 100, pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
    WarmupCosine(0.2, 100, 10, final_learning_rate=0.002),
    StepDecay(0.05, steps_per_epoch=4, step_epochs=3, gamma=0.5),
], ids=["OneCycle", "WarmupCosine", "StepDecay"])
def test_a_schedule_reloads_from_its_config_and_inside_a_saved_optimizer(schedule):
    steps = [0, 5, 11, 40, 99]
    serialized = keras.optimizers.schedules.serialize(schedule)
    reloaded = keras.optimizers.schedules.deserialize(serialized)
    assert type(reloaded) is type(schedule)
    assert reloaded.get_config() == schedule.get_config()
    np.testing.assert_allclose(rates(reloaded, steps), rates(schedule, steps))

    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    for step in steps:  # the optimizer's rate is its schedule at its step counter
        restored.iterations.assign(step)
        assert float(restored.learning_rate) == pytest.approx(float(schedule(step)), rel=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: OneCycle(0.0, 100), "must be > 0. Received: peak_learning_rate=0.0"),
    (lambda: OneCycle(0.1, 100, pct_start=1.5), "pct_start must be in"),
    (lambda: OneCycle(0.1, 3, pct_start=0.3), "Received: pct_start=0.3, total_steps=3"),
    (lambda: WarmupCosine(0.1, 10, warmup_steps=10), "warmup_steps must be in"),
    (lambda: WarmupCosine(0.1, 10, 2, final_learning_rate=0.2), "final_learning_rate must be in"),
    (lambda: StepDecay(0.1, steps_per_epoch=0, step_epochs=10, gamma=0.1), "steps_per_epoch=0"),
])
def test_invalid_schedule_settings_are_refused_with_what_was_received(make, message):
    with pytest.raises(UserError, match=re.escape(message)):
        make()
