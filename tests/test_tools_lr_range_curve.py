"""The range test's curve reading (tools.lr_range_curve) on noiseless curves whose answer is known: the lag
taken out of the minimum, the steepest descent, stopping on divergence, and the caveats a bad sweep gets."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from recipes.errors import UsageError
from tools.lr_range_curve import (
    DEFAULT_LR_RANGES,
    Analysis,
    LossCurve,
    RangeTestSettings,
    analyse,
    round_significant,
)
from training.optimization import scale_learning_rate


def sweep(settings: RangeTestSettings, loss_at: Callable[[float], float]) -> tuple[LossCurve, Analysis]:
    """Feed ``loss_at(log10 LR)`` through the sweep until it stops, and read the curve at batch 32."""
    curve = LossCurve(settings)
    for step in range(settings.iterations):
        lr = settings.min_lr * settings.multiplier(step)
        if curve.record(lr, loss_at(math.log10(lr))):
            break
    return curve, analyse(curve, 32, "linear")


def test_smoothing_lag_is_taken_out_of_the_minimum() -> None:
    """A valley centred at LR 1e-3 is read at 1e-3, not ~3x higher where the smoothing lag puts the minimum."""
    _, analysis = sweep(RangeTestSettings(1e-6, 1.0, 100), lambda x: 1.0 + 0.1 * (x + 3) ** 2)
    assert analysis.minimum is not None
    assert analysis.minimum.lr == pytest.approx(1e-3, rel=0.15)
    assert analysis.minimum.lr_at_step > 2e-3


def test_steepest_descent_and_minimum_of_a_learning_curve() -> None:
    """Loss falls fastest at 1e-4 (a sigmoid in log LR), bottoms out at 1e-2, then rises steeply."""

    def loss_at(x: float) -> float:
        return 2.3 - 1.0 / (1 + math.exp(-3 * (x + 4))) + 0.5 * max(0.0, x + 2) ** 2

    _, analysis = sweep(RangeTestSettings(1e-6, 1.0, 100), loss_at)
    assert analysis.steepest is not None and analysis.minimum is not None
    assert 5e-5 < analysis.steepest.lr < 2e-4
    # A flat-then-steep valley is read low (the safe side), within half a decade.
    assert 3e-3 < analysis.minimum.lr <= 1e-2


def test_suggestions_are_fractions_of_the_minimum_as_base_lr_per_256() -> None:
    _, analysis = sweep(RangeTestSettings(1e-6, 1.0, 100), lambda x: 1.0 + 0.1 * (x + 3) ** 2)
    assert analysis.minimum is not None
    for name, fraction in {"conservative": 0.1, "moderate": 0.5, "aggressive": 1.0}.items():
        suggestion = analysis.suggestions[name]
        # At batch 32 the linear rule applies 32/256 of base_lr.
        assert suggestion.base_lr == round_significant(analysis.minimum.base_lr * fraction)
        assert suggestion.base_lr == pytest.approx(analysis.minimum.lr * fraction * 8, rel=0.01)
        assert suggestion.lr == pytest.approx(scale_learning_rate(suggestion.base_lr, 32, "linear").lr)


def test_divergence_stops_the_sweep() -> None:
    """A valley at 1e-3 with a cliff past 1e-2: the sweep stops soon after the cliff, the valley still read."""
    curve, analysis = sweep(
        RangeTestSettings(1e-6, 1.0, 100), lambda x: 1.0 + 0.1 * (x + 3) ** 2 + 20 * max(0.0, x + 2)
    )
    assert curve.stopped_early and len(curve.losses) < 80 and "diverged" in curve.stop_reason
    assert analysis.minimum is not None and analysis.minimum.lr == pytest.approx(1e-3, rel=0.5)


def test_a_loss_that_is_not_finite_stops_the_sweep_at_once() -> None:
    curve, _ = sweep(RangeTestSettings(1e-6, 1.0, 100), lambda x: 2.0 if x < -3 else math.nan)
    assert curve.stopped_early and "nan" in curve.stop_reason
    assert curve.lrs[-1] >= 1e-3 > curve.lrs[-2]


def test_sweep_that_starts_too_high_suggests_nothing() -> None:
    _, analysis = sweep(RangeTestSettings(1.0, 100.0, 30), lambda x: 1.0 + x)
    assert not analysis.suggestions and "lower --min-lr" in analysis.warnings[0]


def test_loss_still_falling_at_max_lr_is_flagged() -> None:
    _, analysis = sweep(RangeTestSettings(1e-6, 1e-2, 50), lambda x: 1.0 - 0.1 * x)
    assert analysis.suggestions and "raise --max-lr" in analysis.warnings[0]


def test_default_range_follows_the_optimizer() -> None:
    sgd = RangeTestSettings.for_optimizer("decoupled_sgdw")
    adamw = RangeTestSettings.for_optimizer("decoupled_adamw", iterations=200)
    assert (sgd.min_lr, sgd.max_lr) == DEFAULT_LR_RANGES["decoupled_sgdw"]
    assert adamw.max_lr < sgd.max_lr and adamw.iterations == 200


def test_lars_has_no_default_range_and_sweeps_the_range_given() -> None:
    """LARS's trust ratio makes SGD's range meaningless and none is measured: the user names the ends."""
    with pytest.raises(UsageError, match="--min-lr and --max-lr"):
        RangeTestSettings.for_optimizer("lars", min_lr=0.01)
    lars = RangeTestSettings.for_optimizer("lars", min_lr=0.01, max_lr=50.0)
    assert (lars.min_lr, lars.max_lr) == (0.01, 50.0)


@pytest.mark.parametrize(
    ("min_lr", "max_lr", "iterations", "message"),
    [
        (1.0, 0.1, 100, "--min-lr < --max-lr"),
        (0.0, 1.0, 100, "--min-lr < --max-lr"),
        (1e-5, 1.0, 5, "at least"),
    ],
)
def test_bad_sweep_settings_are_usage_errors(
    min_lr: float, max_lr: float, iterations: int, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        RangeTestSettings.for_optimizer("decoupled_sgdw", min_lr, max_lr, iterations)
