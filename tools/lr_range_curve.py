"""The LR range test's loss curve and what it says: the sweep's shape, the smoothed loss and stopping rule, the
steepest-descent and minimum-loss learning rates, and the suggestions made from them.

Plain numbers in, plain numbers out (no Composer, no model), so every rule here is tested on curves whose answer
is known. ``tools.lr_range_test`` feeds it from a real training run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recipes.errors import UsageError
from training.optimization import base_lr_for, scale_learning_rate

# Sweep ends per optimizer, as applied LRs. They differ by orders of magnitude: SGD trains ResNets at 0.1-1 and
# diverges near 10; Adam-type optimizers normalise the step and train at 1e-4-1e-2. Narrower than fastai's
# 1e-7..10, so more of the sweep's steps fall where the loss moves.
DEFAULT_LR_RANGES = {"decoupled_sgdw": (1.0e-4, 10.0), "decoupled_adamw": (1.0e-6, 1.0)}
# fastai's default: ~15 steps per decade over these ranges, about a minute of ResNet-50 on digits on a CPU.
DEFAULT_ITERATIONS = 100
MINIMUM_ITERATIONS = 20
# Smoothing: each plotted loss is the mean of the per-batch losses within 0.3 decade of LR on either side (a
# 0.6-decade window, centred). Centred, so the smoothed curve sits at the LR its batches ran at (no lag to take
# out) and, being a mean of them, never leaves their range. Sized in decades, not steps, because the curve's
# features (a valley about a decade wide) are in log LR: the default 100 steps over 6 decades average 11 batches,
# about what fastai's 0.98 smoothing does over the part of its sweep that matters; a 20-step sweep averages 3
# rather than blurring half its length.
DEFAULT_SMOOTHING_DECADES = 0.6
# The sweep has diverged once the smoothed loss is this many times its lowest so far (fastai's rule).
DEFAULT_DIVERGENCE_FACTOR = 4.0
# A smoothed loss within this fraction of where it started has not moved: the batch-to-batch noise of a flat
# stretch on the digits (2.1-2.5 around 2.3 at batch 32) averages out to within ~5 % over a 3-batch window.
FLAT_BAND = 0.1
# Fractions of the reference LR (the LR at the minimum smoothed loss).
SUGGESTION_FRACTIONS = {"conservative": 0.1, "moderate": 0.5, "aggressive": 1.0}
APPLIED_SUGGESTION = "moderate"


@dataclass(frozen=True)
class RangeTestSettings:
    """How the sweep runs: absolute (applied) LRs at its ends, its length, smoothing and stopping rule."""

    min_lr: float
    max_lr: float
    iterations: int = DEFAULT_ITERATIONS
    smoothing_decades: float = DEFAULT_SMOOTHING_DECADES
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR

    @classmethod
    def for_optimizer(
        cls,
        optimizer_name: str,
        min_lr: float | None = None,
        max_lr: float | None = None,
        iterations: int | None = None,
    ) -> RangeTestSettings:
        """The optimizer's default range with any of ``--min-lr``, ``--max-lr``, ``--iterations`` applied."""
        if optimizer_name not in DEFAULT_LR_RANGES and (min_lr is None or max_lr is None):
            # LARS: its trust ratio moves each weight matrix by about lr x trust_coefficient x |w| whatever the
            # gradient's size, so SGD's range does not carry over, and no range has been measured for it.
            raise UsageError(
                f"The LR range test has no measured default range for optimizer.name={optimizer_name} (ranges "
                f"exist for {', '.join(DEFAULT_LR_RANGES)}); give both --min-lr and --max-lr as applied LRs."
            )
        default_min, default_max = DEFAULT_LR_RANGES.get(optimizer_name, (min_lr, max_lr))
        settings = cls(
            min_lr=default_min if min_lr is None else min_lr,
            max_lr=default_max if max_lr is None else max_lr,
            iterations=DEFAULT_ITERATIONS if iterations is None else iterations,
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse a sweep that cannot show anything, naming the flag to change."""
        if not 0 < self.min_lr < self.max_lr or not math.isfinite(self.max_lr):
            raise UsageError(
                f"The LR range test needs 0 < --min-lr < --max-lr; got --min-lr {self.min_lr:g} and "
                f"--max-lr {self.max_lr:g}."
            )
        if self.iterations < MINIMUM_ITERATIONS:
            raise UsageError(
                f"--iterations {self.iterations} is too short for a range test; use at least "
                f"{MINIMUM_ITERATIONS} (default {DEFAULT_ITERATIONS})."
            )
        if self.smoothing_decades <= 0 or self.divergence_factor <= 1:
            raise UsageError(
                f"Range test smoothing must span more than 0 decades and the divergence factor be above 1; got "
                f"{self.smoothing_decades:g} and {self.divergence_factor:g}."
            )

    def multiplier(self, step: int) -> float:
        """LR at ``step`` (from 0) over ``min_lr``: exponential, reaching ``max_lr`` at the last step."""
        return (self.max_lr / self.min_lr) ** (step / (self.iterations - 1))

    def decades(self) -> float:
        """How many powers of ten the sweep spans."""
        return math.log10(self.max_lr / self.min_lr)

    def smoothing_half_width(self) -> int:
        """Steps on each side of a step that its smoothed loss averages (half the window, at least one)."""
        steps_per_decade = (self.iterations - 1) / self.decades()
        return max(1, round(self.smoothing_decades / 2 * steps_per_decade))


def smooth(losses: Sequence[float], half_width: int) -> list[float]:
    """Each loss replaced by the mean of the losses within ``half_width`` steps of it (fewer at the two ends).

    A mean of its neighbours, so the smoothed curve never leaves the range of the losses it averages, and
    centred, so it describes the LR its own step ran at.
    """
    values = np.asarray(losses, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low = np.maximum(0, index - half_width)
    high = np.minimum(len(values), index + half_width + 1)
    return ((cumulative[high] - cumulative[low]) / (high - low)).tolist()


@dataclass
class LossCurve:
    """Each step's LR and loss, and the one divergence rule: what stops the sweep and what the title, report
    and advice call diverged.

    The rule: the loss is not finite, or the smoothed loss at the newest step (the mean of the last
    ``half_width + 1`` losses, all there is to its right) is more than ``divergence_factor`` times the lowest
    smoothed loss so far.
    """

    settings: RangeTestSettings
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    # The 1-based step at which the rule fired, and what it saw; None while the loss has not diverged.
    diverged_step: int | None = None
    divergence: str = ""

    def record(self, lr: float, loss: float) -> bool:
        """Add one step; True when the loss has diverged and the sweep should stop."""
        self.lrs.append(lr)
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.diverged_step = len(self.losses)
            self.divergence = f"the loss became {loss} at LR {lr:.3g}"
            return True
        smoothed = smooth(self.losses, self.settings.smoothing_half_width())
        lowest = min(smoothed)
        if smoothed[-1] > self.settings.divergence_factor * lowest:
            self.diverged_step = len(self.losses)
            self.divergence = (
                f"diverged at LR {lr:.3g}: smoothed loss {smoothed[-1]:.4g} > "
                f"{self.settings.divergence_factor:g} x its lowest {lowest:.4g}"
            )
            return True
        return False

    @property
    def diverged(self) -> bool:
        """Whether the divergence rule fired."""
        return self.diverged_step is not None

    @property
    def stopped_early(self) -> bool:
        """Whether the sweep ended before its last iteration."""
        return len(self.losses) < self.settings.iterations

    @property
    def stop_reason(self) -> str:
        """Why the sweep ended, in words; it says diverged only when the divergence rule fired."""
        steps = f"{len(self.losses)} of {self.settings.iterations} steps"
        if self.diverged:
            return f"{self.divergence} (stopped after {steps})"
        if self.stopped_early:
            return f"stopped after {steps} without diverging"
        return f"reached --max-lr {self.settings.max_lr:g} after {steps} without diverging"

    @property
    def headline(self) -> str:
        """The stop reason in a few words, for the plot's title."""
        steps = f"{len(self.losses)} of {self.settings.iterations} steps"
        if self.diverged:
            return f"diverged at LR {self.lrs[-1]:.3g} ({steps})"
        return f"did not diverge up to LR {self.lrs[-1]:.3g} ({steps})" if self.lrs else "no steps"

    @property
    def smoothed_losses(self) -> list[float]:
        """The smoothed loss at every step: the finite losses smoothed, NaN where the loss was not finite."""
        finite = next((index for index, loss in enumerate(self.losses) if not math.isfinite(loss)), None)
        kept = self.losses if finite is None else self.losses[:finite]
        smoothed = smooth(kept, self.settings.smoothing_half_width()) if kept else []
        return smoothed + [math.nan] * (len(self.losses) - len(kept))


@dataclass(frozen=True)
class ReferenceLR:
    """A point read off the smoothed curve: its step, its LR, and that LR as a per-256 base_lr."""

    step: int
    lr: float
    base_lr: float
    smoothed_loss: float


@dataclass(frozen=True)
class Suggestion:
    """A fraction of the reference LR, as the recipe's ``optimizer.base_lr`` (3 significant digits) and the
    applied LR that base_lr gives at the recipe's batch size."""

    name: str
    fraction: float
    base_lr: float
    lr: float


@dataclass(frozen=True)
class Analysis:
    """What the curve says: its shape (``SHAPES``), the steepest-descent and minimum-loss LRs, the suggestions,
    and the advice when the sweep should be run differently."""

    shape: str
    steepest: ReferenceLR | None
    minimum: ReferenceLR | None
    suggestions: dict[str, Suggestion]
    warnings: list[str]


# The shapes a curve is read as, and what each means for the user.
SHAPES = {
    "valley": "the loss fell to a minimum and rose after it: suggestions from the minimum",
    "still_falling": "the loss fell to the end of the sweep: suggestions, and raise --max-lr",
    "flat": "the loss never moved: the sweep is too short or too low",
    "flat_then_rising": "the loss stayed flat, then rose or diverged: too few steps to learn; raise --iterations",
    "rising_from_start": "the loss rose from the first steps: the sweep starts too high; lower --min-lr",
}


def round_significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits: a base_lr people read and type."""
    return float(f"{value:.{digits}g}")


def analyse(curve: LossCurve, global_batch_size: int, lr_scaling: str) -> Analysis:
    """Read the curve's shape, then, if the loss fell, the steepest descent and the minimum of the smoothed loss
    and the suggestions scaled from the minimum; otherwise the advice that follows from the shape.

    The reference for the suggestions is the LR at the minimum smoothed loss: the largest LR at which the loss
    was still falling. A whole run at that LR is the edge (aggressive); a tenth of it is the conservative reading
    (fastai's ``minimum / 10``); half is the moderate default. The steepest descent, where the loss fell fastest
    per decade of LR (fastai's ``steep``), is reported beside it; it marks where the network starts to learn
    fast, and sits below the moderate suggestion on the digits curve.

    A loss that never fell below ``FLAT_BAND`` of its start gives no reading, and the advice depends on where
    it left that band: never (too short or too low a sweep), upwards within the first smoothing window (the sweep
    starts too high), or upwards later (flat, then too high before the network had the steps to learn).
    """
    settings = curve.settings
    half_width = settings.smoothing_half_width()
    smoothed = np.array(curve.smoothed_losses, dtype=float)
    finite = int(np.isfinite(smoothed).sum())
    if finite == 0:
        return Analysis(
            "rising_from_start",
            None,
            None,
            {},
            [
                f"{curve.divergence} at the first step: the sweep starts too high; lower --min-lr (now {settings.min_lr:g})"
            ],
        )
    smoothed = smoothed[:finite]
    lrs = curve.lrs
    start = float(smoothed[0])
    lowest = int(np.argmin(smoothed))
    if smoothed[lowest] >= (1 - FLAT_BAND) * start:
        above = np.flatnonzero(smoothed > (1 + FLAT_BAND) * start)
        # Where the loss left the band upwards; a loss that became NaN left it at that step.
        rise = int(above[0]) if above.size else (finite if curve.diverged else None)
        if rise is None:
            return Analysis(
                "flat",
                None,
                None,
                {},
                [
                    f"the smoothed loss stayed within {FLAT_BAND:.0%} of {start:.3g} from LR {lrs[0]:.3g} to "
                    f"{lrs[-1]:.3g}: the network had too few steps to learn ({settings.iterations} steps over "
                    f"{settings.decades():.1f} decades) or the LRs were too low; raise --iterations (now "
                    f"{settings.iterations}, default {DEFAULT_ITERATIONS}) or --max-lr (now {settings.max_lr:g})"
                ],
            )
        risen = f"{curve.divergence}" if curve.diverged else f"rose to {smoothed[-1]:.3g} by LR {lrs[-1]:.3g}"
        if rise <= 2 * half_width:
            return Analysis(
                "rising_from_start",
                None,
                None,
                {},
                [
                    f"the loss rose from the first steps and never fell ({risen}): the sweep starts too high; "
                    f"lower --min-lr (now {settings.min_lr:g})"
                ],
            )
        return Analysis(
            "flat_then_rising",
            None,
            None,
            {},
            [
                f"the loss stayed flat near {start:.3g} from LR {lrs[0]:.3g} to {lrs[rise - 1]:.3g}, then rose "
                f"without ever falling ({risen}): {settings.iterations} steps over {settings.decades():.1f} decades gave "
                f"the network too few steps to learn before the LR got too high; raise --iterations (now "
                f"{settings.iterations}, default {DEFAULT_ITERATIONS}). LRs from {lrs[rise]:.3g} up made the "
                "loss worse"
            ],
        )

    warnings = []
    shape = "valley"
    if lowest == finite - 1 and not curve.diverged:
        shape = "still_falling"
        warnings.append(
            f"the loss was still falling at --max-lr {settings.max_lr:g}; the real minimum may lie higher: raise "
            "--max-lr"
        )

    def reference(step: int) -> ReferenceLR:
        return ReferenceLR(
            step=step + 1,
            lr=lrs[step],
            base_lr=base_lr_for(lrs[step], global_batch_size, lr_scaling),
            smoothed_loss=float(smoothed[step]),
        )

    steepest = None
    if lowest >= 2:
        # The first half window averages fewer batches; left out when the descent is long enough to spare it.
        first = half_width if lowest - half_width >= 2 else 0
        descent = np.arange(first, lowest + 1)
        slopes = np.gradient(smoothed[descent], np.log(np.array(lrs, dtype=float)[descent]))
        steepest = reference(int(descent[int(np.argmin(slopes))]))
    minimum = reference(lowest)
    suggestions = {}
    for name, fraction in SUGGESTION_FRACTIONS.items():
        base_lr = round_significant(minimum.base_lr * fraction)
        lr = scale_learning_rate(base_lr, global_batch_size, lr_scaling).lr
        suggestions[name] = Suggestion(name, fraction, base_lr, lr)
    return Analysis(shape, steepest, minimum, suggestions, warnings)
