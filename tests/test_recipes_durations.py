"""Tests for recipes/durations.py: the one rule that turns a recipe's Composer times into optimizer steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from composer.core import Time, Timestamp, TimeUnit
from composer.optim import ConstantWithWarmupScheduler

from recipes.durations import is_zero, parse_time, run_steps, steps_in
from recipes.errors import UsageError

BATCHES_PER_EPOCH = 7
GLOBAL_BATCH = 32


def composer_warmup_steps(t_warmup: str, max_duration: str) -> int:
    """The steps during which Composer's own warmup schedule is still below its peak, read off the schedule
    (Composer needs a warmup in samples to come with a run in samples)."""
    scheduler = ConstantWithWarmupScheduler(t_warmup=t_warmup)
    duration = Time.from_timestring(max_duration)
    total = {
        TimeUnit.EPOCH: duration.value * BATCHES_PER_EPOCH,
        TimeUnit.SAMPLE: duration.value // GLOBAL_BATCH,
    }
    total = total.get(duration.unit, duration.value)
    warming = 0
    for step in range(total):
        state = SimpleNamespace(
            max_duration=duration,
            dataloader_len=Time(BATCHES_PER_EPOCH, TimeUnit.BATCH),
            timestamp=Timestamp(
                epoch=step // BATCHES_PER_EPOCH,
                batch=step,
                batch_in_epoch=step % BATCHES_PER_EPOCH,
                sample=step * GLOBAL_BATCH,
            ),
        )
        warming += float(scheduler(state)) < 1.0
    return warming


@pytest.mark.parametrize(
    ("t_warmup", "max_duration"),
    [("3ep", "10ep"), ("7ba", "10ep"), ("0.05dur", "10ep"), ("0.13dur", "200ba"), ("100sp", "2240sp")],
)
def test_steps_round_as_composers_schedule_does(t_warmup: str, max_duration: str) -> None:
    steps = {"batches_per_epoch": BATCHES_PER_EPOCH, "global_batch_size": GLOBAL_BATCH}
    total = run_steps(max_duration, **steps)
    ours = steps_in(t_warmup, "scheduler.t_warmup", **steps, total_steps=total)
    assert ours == composer_warmup_steps(t_warmup, max_duration)


def test_run_length_in_each_unit() -> None:
    steps = {"batches_per_epoch": BATCHES_PER_EPOCH, "global_batch_size": GLOBAL_BATCH}
    assert run_steps("3ep", **steps) == 21
    assert run_steps("50ba", **steps) == 50
    assert run_steps("1000sp", **steps) == 32  # the 32nd step reaches 1,024 samples


@pytest.mark.parametrize("value", ["0", "0ep", "0ba", "0dur", "0sp"])
def test_zero_in_any_unit_is_zero_steps(value: str) -> None:
    assert is_zero(value, "scheduler.t_warmup")
    assert steps_in(value, "scheduler.t_warmup", batches_per_epoch=7, global_batch_size=32) == 0


def test_a_fraction_of_the_run_needs_the_run_length() -> None:
    with pytest.raises(UsageError, match=r"'doctor\.chance_grace' is '0\.1dur'.*epochs"):
        steps_in("0.1dur", "doctor.chance_grace", batches_per_epoch=7, global_batch_size=32)


def test_max_duration_cannot_be_a_fraction_of_itself() -> None:
    with pytest.raises(UsageError, match=r"'max_duration' is '1dur'") as error:
        run_steps("1dur", batches_per_epoch=7, global_batch_size=32)
    assert "fraction" not in str(error.value)


def test_a_value_that_is_not_a_time_names_the_key() -> None:
    with pytest.raises(UsageError, match=r"'doctor\.chance_grace' is 'soon'.*Composer time"):
        parse_time("soon", "doctor.chance_grace")
