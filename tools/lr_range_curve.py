"""The LR range test's loss curve and what it says: the sweep's shape, the smoothed loss and stopping rule, the
steepest-descent and minimum-loss learning rates, and the suggestions made from them.

Plain numbers in, plain numbers out (no Composer, no model), so every rule here is tested on curves whose answer
is known. ``tools.lr_range_test`` feeds it from a real training run.
"""

from __future__ import annotations

import math
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
# Exponential smoothing of the loss. fastai uses 0.98, a ~50-step window: half of a 100-step sweep, which blurs
# the valley. 0.9 averages ~10 batches, enough to see through batch-to-batch noise at batch 32 on digits.
DEFAULT_SMOOTHING = 0.9
# Stop once the smoothed loss is this many times its minimum (fastai's rule).
DEFAULT_DIVERGENCE_FACTOR = 4.0
# Fractions of the reference LR (the LR at the minimum smoothed loss, lag taken out).
SUGGESTION_FRACTIONS = {"conservative": 0.1, "moderate": 0.5, "aggressive": 1.0}
APPLIED_SUGGESTION = "moderate"


@dataclass(frozen=True)
class RangeTestSettings:
    """How the sweep runs: absolute (applied) LRs at its ends, its length, smoothing and stopping rule."""

    min_lr: float
    max_lr: float
    iterations: int = DEFAULT_ITERATIONS
    smoothing: float = DEFAULT_SMOOTHING
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
        if not 0 <= self.smoothing < 1 or self.divergence_factor <= 1:
            raise UsageError(
                f"Range test smoothing must be in [0, 1) and the divergence factor above 1; got "
                f"{self.smoothing:g} and {self.divergence_factor:g}."
            )

    def multiplier(self, step: int) -> float:
        """LR at ``step`` (from 0) over ``min_lr``: exponential, reaching ``max_lr`` at the last step."""
        return (self.max_lr / self.min_lr) ** (step / (self.iterations - 1))

    def warmup_steps(self) -> int:
        """Steps at the start where the smoothed loss averages too few batches to trust (one smoothing window)."""
        return max(1, round(1 / (1 - self.smoothing)))


@dataclass
class LossCurve:
    """Each step's LR and loss, the bias-corrected exponentially smoothed loss, and the decision to stop.

    The smoothed loss at step t averages the losses of earlier steps, measured at lower LRs: it lags behind the
    LR. So the same weights also average log(LR), and each smoothed loss is paired with that geometric-mean LR,
    the LR it actually describes (``smoothed_lrs``). On a valley that is locally a parabola in log(LR) this puts
    the smoothed minimum exactly at the true one; on a valley that is flat and then rises steeply it lands low
    (on a synthetic one with its minimum at 1e-2: 5e-3), where the uncorrected reading lands high (1.7e-2),
    towards divergence. Low is the safe side for a learning rate.
    """

    settings: RangeTestSettings
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed_losses: list[float] = field(default_factory=list)
    smoothed_lrs: list[float] = field(default_factory=list)
    stop_reason: str = ""
    stopped_early: bool = False
    _average_loss: float = field(default=0.0, init=False, repr=False)
    _average_log_lr: float = field(default=0.0, init=False, repr=False)
    _lowest: float = field(default=math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        self.stop_reason = f"reached --max-lr {self.settings.max_lr:g} after {self.settings.iterations} steps"

    def record(self, lr: float, loss: float) -> bool:
        """Add one step; True when the sweep should stop (the loss is not finite, or has diverged)."""
        beta = self.settings.smoothing
        correction = 1 - beta ** (len(self.losses) + 1)
        self.lrs.append(lr)
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.smoothed_losses.append(math.nan)
            self.smoothed_lrs.append(lr)
            self.stop_reason = f"the loss became {loss} at LR {lr:.3g}"
            self.stopped_early = True
            return True
        self._average_loss = beta * self._average_loss + (1 - beta) * loss
        self._average_log_lr = beta * self._average_log_lr + (1 - beta) * math.log(lr)
        smoothed = self._average_loss / correction
        self.smoothed_losses.append(smoothed)
        self.smoothed_lrs.append(math.exp(self._average_log_lr / correction))
        self._lowest = min(self._lowest, smoothed)
        if smoothed > self.settings.divergence_factor * self._lowest:
            self.stop_reason = (
                f"diverged at LR {lr:.3g}: smoothed loss {smoothed:.4g} > {self.settings.divergence_factor:g} x "
                f"its minimum {self._lowest:.4g}"
            )
            self.stopped_early = True
            return True
        return False


@dataclass(frozen=True)
class ReferenceLR:
    """A point read off the smoothed curve: its step, the lag-corrected LR, and that LR as a per-256 base_lr."""

    step: int
    lr: float
    base_lr: float
    # The LR the optimizer used at that step, before the smoothing lag is taken out.
    lr_at_step: float
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
    """What the curve says: the steepest-descent and minimum-loss LRs, the suggestions, and any caveats."""

    steepest: ReferenceLR | None
    minimum: ReferenceLR | None
    suggestions: dict[str, Suggestion]
    warnings: list[str]


def round_significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits: a base_lr people read and type."""
    return float(f"{value:.{digits}g}")


def analyse(curve: LossCurve, global_batch_size: int, lr_scaling: str) -> Analysis:
    """Read the steepest descent and the minimum off the smoothed curve, and scale the minimum into suggestions.

    The reference for the suggestions is the LR at the minimum smoothed loss: the largest LR at which the loss
    was still falling. A whole run at that LR is the edge (aggressive); a tenth of it is the conservative reading
    (fastai's ``minimum / 10``); half is the moderate default. The steepest descent, where the loss fell fastest
    per decade of LR (fastai's ``steep``), is reported beside it; it marks where the network starts to learn
    fast, and sits below the moderate suggestion on the digits curve. The first smoothing window (noisy: few
    batches averaged) and everything after the minimum (no descent there) are left out of both readings.
    """
    settings = curve.settings
    smoothed = np.array(curve.smoothed_losses, dtype=float)
    finite = np.isfinite(smoothed)
    skip = settings.warmup_steps()
    if finite.sum() <= skip + 1:
        return Analysis(
            None,
            None,
            {},
            [
                f"the sweep stopped after {len(smoothed)} steps, before the smoothed loss meant anything; "
                f"lower --min-lr (now {settings.min_lr:g}) or --max-lr (now {settings.max_lr:g})"
            ],
        )
    lowest = int(np.nanargmin(np.where(finite, smoothed, np.nan)))
    if lowest < skip:
        return Analysis(
            None,
            None,
            {},
            [
                f"the smoothed loss was lowest in the first {skip} steps and never fell after: the sweep starts "
                f"too high; lower --min-lr (now {settings.min_lr:g})"
            ],
        )
    warnings = []
    if lowest == int(np.flatnonzero(finite)[-1]) and not curve.stopped_early:
        warnings.append(
            f"the loss was still falling at --max-lr {settings.max_lr:g}; the real minimum may lie higher: raise "
            "--max-lr"
        )

    def reference(step: int) -> ReferenceLR:
        lr = curve.smoothed_lrs[step]
        return ReferenceLR(
            step=step + 1,
            lr=lr,
            base_lr=base_lr_for(lr, global_batch_size, lr_scaling),
            lr_at_step=curve.lrs[step],
            smoothed_loss=float(smoothed[step]),
        )

    steepest = None
    if lowest - skip >= 2:
        descent = np.arange(skip, lowest + 1)
        log_lrs = np.log(np.array(curve.smoothed_lrs, dtype=float)[descent])
        slopes = np.gradient(smoothed[descent], log_lrs)
        steepest = reference(int(descent[int(np.argmin(slopes))]))
    minimum = reference(lowest)
    suggestions = {}
    for name, fraction in SUGGESTION_FRACTIONS.items():
        base_lr = round_significant(minimum.base_lr * fraction)
        lr = scale_learning_rate(base_lr, global_batch_size, lr_scaling).lr
        suggestions[name] = Suggestion(name, fraction, base_lr, lr)
    return Analysis(steepest, minimum, suggestions, warnings)
