"""The learning-rate schedules follow their formulas at every step, as a config names
them, and survive saving.

Each schedule is compared with an independent, plain-Python statement of its formula
over whole runs. For OneCycle that statement follows PyTorch's ``OneCycleLR.get_lr``
(phases with ``end_step`` boundaries, cosine annealing) as published in its source.
Where a config can state the schedule, it is built as training builds it, by
``make_optimizer`` from the ``train`` section, so the fields are checked to reach it.

Run: python -m pytest tests/test_schedules.py
"""

import math
import pathlib
import re

import keras
import numpy as np
import pytest

from keras_caltech.config import load_config
from keras_caltech.errors import UserError
from keras_caltech.training.optim import make_optimizer, make_schedule
from keras_caltech.training.schedules import OneCycle, StepDecay, WarmupCosine

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
STEPS_PER_EPOCH = 10


def rates(schedule, steps):
    """The schedule's learning rate at each of ``steps``, as float64 NumPy values."""
    return np.array([float(schedule(step)) for step in steps])


def train_config(*overrides):
    return load_config(None, list(overrides)).train


def optimizer_rates(optimizer, steps):
    """The optimizer's learning rate at each of ``steps`` (its schedule reads the step counter)."""
    found = []
    for step in steps:
        optimizer.iterations.assign(step)
        found.append(float(optimizer.learning_rate))
    return np.array(found)


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


# --- The schedule classes against their formulas ----------------------------------------


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


# --- As a config names them: make_optimizer, as training builds them ---------------------


def test_a_constant_rate_stays_put():
    optimizer = make_optimizer(train_config("train.schedule=constant", "train.learning_rate=0.05"),
                               STEPS_PER_EPOCH)
    np.testing.assert_allclose(optimizer_rates(optimizer, [0, 7, 500]), 0.05, rtol=1e-6)


def test_the_step_schedule_multiplies_by_gamma_every_step_epochs():
    train = train_config("train.schedule=step", "train.learning_rate=0.01", "train.step_epochs=2",
                         "train.step_gamma=0.1", "train.epochs=7")
    optimizer = make_optimizer(train, STEPS_PER_EPOCH)
    steps = range(7 * STEPS_PER_EPOCH)
    expected = [0.01 * 0.1 ** (step // (2 * STEPS_PER_EPOCH)) for step in steps]
    found = optimizer_rates(optimizer, steps)
    np.testing.assert_allclose(found, expected, rtol=1e-5)
    assert found[20] == pytest.approx(found[19] * 0.1)  # the drop falls on the epoch boundary


def test_onecycle_starts_low_peaks_after_pct_start_of_the_run_and_ends_at_the_floor():
    train = train_config("train.schedule=onecycle", "train.learning_rate=0.1", "train.epochs=10",
                         "train.pct_start=0.3")
    found = optimizer_rates(make_optimizer(train, STEPS_PER_EPOCH), range(151))  # a run of 100 steps
    start, peak, end = found[[0, 29, 99]]  # the peak at 0.3 * 100 - 1
    assert start == pytest.approx(0.1 / 25)
    assert peak == pytest.approx(0.1)
    assert end == pytest.approx(0.1 / 25 / 1e4)
    assert np.all(np.diff(found[:30]) > 0)
    assert np.all(np.diff(found[29:100]) < 0)
    np.testing.assert_allclose(found[100:], end)  # stays at the floor


def test_cosine_warms_up_over_warmup_epochs_and_decays_to_zero_at_the_end_of_the_run():
    # WarmupCosine's shape is checked against its formula above; here, that the config's
    # epochs become its steps: warm after 1 epoch (10 steps), zero after 5 (50 steps).
    train = train_config("train.schedule=cosine", "train.learning_rate=0.002", "train.epochs=5",
                         "train.warmup_epochs=1")
    found = optimizer_rates(make_optimizer(train, STEPS_PER_EPOCH), [0, 5, 10, 30, 50])
    np.testing.assert_allclose(found, [0.0, 0.001, 0.002, 0.001, 0.0], rtol=1e-4, atol=1e-9)


def test_a_fine_tuning_phase_runs_the_schedule_over_its_own_epochs_and_rate():
    train = train_config("train.schedule=onecycle", "train.learning_rate=0.1", "train.epochs=20")
    optimizer = make_optimizer(train, STEPS_PER_EPOCH, epochs=3, learning_rate=1e-4)
    peak, last = optimizer_rates(optimizer, [8, 29])
    assert peak == pytest.approx(1e-4)  # peak at 0.3 * 30 - 1
    assert last == pytest.approx(one_cycle_like_pytorch(29, 1e-4, 30, 0.3, 25.0, 1e4), rel=1e-4)


@pytest.mark.parametrize("total_steps", [1, 2, 3, 5])
def test_the_recipes_one_cycle_schedule_accepts_runs_of_a_few_steps(total_steps):
    train = load_config(CONFIGS / "default.yaml", [f"train.epochs={total_steps}"]).train
    schedule = make_schedule(train, steps_per_epoch=1)
    found = [float(schedule(step)) if callable(schedule) else schedule for step in range(total_steps)]
    # It never exceeds the peak, and a run of two steps or more ends below where it peaked.
    assert max(found) <= train.learning_rate * (1 + 1e-6)
    assert total_steps == 1 or found[-1] < max(found)


# --- Saving and refusing -----------------------------------------------------------------


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
