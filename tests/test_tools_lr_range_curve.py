"""The range test's curve reading (tools.lr_range_curve) on curves whose answer is known: the minimum and the
steepest descent, a smoothed curve that stays on its losses, the one divergence rule, and the advice each shape of
curve gets."""

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


# Per-batch losses of `train.py recipes/smoke.yaml --find-lr --iterations 20` on the digits (2026-12-07), the run
# that was told "the sweep starts too high" while its loss was flat from 1e-6 and blew up past 1e-2.
SMOKE_20_STEPS = [2.242, 2.347, 2.36, 2.331, 2.421, 2.446, 2.234, 2.297, 2.157, 2.12, 2.369, 2.29, 2.595, 2.98,
                  2.615, 7.121, 8.828, 11.39, 15.121, 33.632]  # fmt: skip


def replay(settings: RangeTestSettings, losses: list[float]) -> LossCurve:
    """Feed recorded per-step losses through the sweep until it stops."""
    curve = LossCurve(settings)
    for step, loss in enumerate(losses):
        if curve.record(settings.min_lr * settings.multiplier(step), loss):
            break
    return curve


def test_minimum_is_read_where_the_valley_is() -> None:
    """A valley centred at LR 1e-3 is read at 1e-3: the centred smoothing has no lag to push it higher."""
    _, analysis = sweep(RangeTestSettings(1e-6, 1.0, 100), lambda x: 1.0 + 0.1 * (x + 3) ** 2)
    assert analysis.minimum is not None
    assert analysis.minimum.lr == pytest.approx(1e-3, rel=0.15)


@pytest.mark.parametrize("source", ["smoke, 20 steps", "noisy valley, 100 steps"])
def test_smoothed_curve_stays_within_the_losses_it_smooths(source: str) -> None:
    """Each smoothed point, drawn at its own step's LR, lies within the per-batch losses of its window: the
    20-step smoke sweep once ended its smoothed curve at loss 9 where the batches at that LR were near 3."""
    if source == "smoke, 20 steps":
        curve = replay(RangeTestSettings(1e-6, 1.0, 20), SMOKE_20_STEPS)
    else:
        noise = [0.3 * math.sin(7.3 * step) for step in range(100)]
        curve = replay(
            RangeTestSettings(1e-6, 1.0, 100),
            [
                2.3 - 1.5 * math.exp(-(((step - 60) / 12) ** 2)) + noise[step] + max(0, step - 80)
                for step in range(100)
            ],
        )
    half_width = curve.settings.smoothing_half_width()
    for step, smoothed in enumerate(curve.smoothed_losses):
        window = curve.losses[max(0, step - half_width) : step + half_width + 1]
        assert min(window) <= smoothed <= max(window), (step, smoothed, window)


def test_smoothing_does_not_lag_behind_the_lr() -> None:
    """On a loss straight in log LR, the smoothed loss inside the sweep is the loss at its own step."""
    curve = replay(RangeTestSettings(1e-6, 1.0, 40), [3.0 - 0.05 * step for step in range(40)])
    half_width = curve.settings.smoothing_half_width()
    inner = range(half_width, 40 - half_width)
    assert [curve.smoothed_losses[step] for step in inner] == pytest.approx(
        [curve.losses[step] for step in inner]
    )


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


def test_stopped_early_means_before_the_last_iteration() -> None:
    """Diverging at the very last step is a divergence, not an early stop; a sweep that never diverges says so."""
    settings = RangeTestSettings(1e-6, 1.0, 20)
    last_step = replay(settings, [2.0] * 19 + [100.0])
    assert last_step.diverged and not last_step.stopped_early
    assert "diverged" in last_step.stop_reason and "20 of 20 steps" in last_step.stop_reason
    calm = replay(settings, [2.0] * 20)
    assert not calm.diverged and not calm.stopped_early
    assert "diverged" not in calm.stop_reason.replace("without diverging", "")


def falling_then_diverging(x: float) -> float:
    return 2.3 - 1.0 / (1 + math.exp(-3 * (x + 4))) + 5 * max(0.0, x + 2) ** 2


@pytest.mark.parametrize(
    ("losses", "iterations", "shape", "diverged", "advice", "wrong_advice"),
    [
        # Flat all the way: the sweep was too short or too low, never too high.
        (lambda x: 2.3 + 0.05 * math.sin(9 * x), 20, "flat", False, "raise --iterations", "lower --min-lr"),
        (falling_then_diverging, 100, "valley", True, None, None),
        # Rising from the first steps: too high.
        (
            lambda x: 2.3 * math.exp(0.8 * (x + 6)),
            40,
            "rising_from_start",
            True,
            "lower --min-lr",
            "--iterations",
        ),
        # Still falling at --max-lr, never diverging: suggestions, and a higher --max-lr.
        (lambda x: 2.3 - 0.3 * (x + 6), 40, "still_falling", False, "raise --max-lr", "lower --min-lr"),
    ],
    ids=["flat", "falling-then-diverging", "diverging-from-the-start", "never-diverging"],
)
def test_advice_follows_the_shape_of_the_curve(
    losses: Callable[[float], float],
    iterations: int,
    shape: str,
    diverged: bool,
    advice: str | None,
    wrong_advice: str | None,
) -> None:
    curve, analysis = sweep(RangeTestSettings(1e-6, 1.0, iterations), losses)
    assert (analysis.shape, curve.diverged) == (shape, diverged)
    # The report's stop reason and the plot's title say diverged exactly when the rule fired.
    assert ("diverged" in curve.stop_reason.replace("without diverging", "")) == diverged
    assert ("diverged" in curve.headline) == diverged
    advice_given = " ".join(analysis.warnings)
    assert (advice or "") in advice_given and (wrong_advice is None or wrong_advice not in advice_given)
    assert bool(analysis.suggestions) == (shape in {"valley", "still_falling"})


def test_flat_then_diverging_smoke_sweep_asks_for_more_steps_not_a_lower_start() -> None:
    """The 20-step smoke sweep: flat from 1e-6, diverging past 1e-2. Too few steps to learn, not too high a start."""
    curve = replay(RangeTestSettings(1e-6, 1.0, 20), SMOKE_20_STEPS)
    analysis = analyse(curve, 32, "linear")
    assert curve.diverged and curve.stopped_early and len(curve.losses) < 20
    assert analysis.shape == "flat_then_rising" and not analysis.suggestions
    assert "raise --iterations (now 20" in analysis.warnings[0] and "--min-lr" not in analysis.warnings[0]


def test_a_loss_that_is_not_finite_stops_the_sweep_at_once() -> None:
    curve, _ = sweep(RangeTestSettings(1e-6, 1.0, 100), lambda x: 2.0 if x < -3 else math.nan)
    assert curve.stopped_early and "nan" in curve.stop_reason
    assert curve.lrs[-1] >= 1e-3 > curve.lrs[-2]


def test_sweep_that_starts_too_high_suggests_nothing() -> None:
    """The loss rises from the first step without diverging (1 -> 3): still too high a start."""
    curve, analysis = sweep(RangeTestSettings(1.0, 100.0, 30), lambda x: 1.0 + x)
    assert not curve.diverged and analysis.shape == "rising_from_start"
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
