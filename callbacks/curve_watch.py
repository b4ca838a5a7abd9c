"""The curve watch: each validation top-1 of a run against a reference curve at the same fraction of the schedule.

The same epoch means different things in different schedules (after 10 epochs FFCV's 16-epoch ResNet-50 is at
56.1 % and its 88-epoch one at 45.6 %), so an evaluation at step s of a run of S steps is compared with the reference
at s / S of its own schedule, interpolated between its evaluations (``callbacks.reference_curves``). At each
evaluation the run prints one line, logs ``watch/*`` beside ``val/acc1`` in ``metrics.jsonl`` (and wandb) and
redraws ``curve_watch.png`` beside the run. After ``watch.grace``, two evaluations in a row outside the band are a
finding (printed once, in ``findings.jsonl``), and with ``watch.stop_below`` two in a row that many points under
the reference checkpoint and stop the run; train.py then exits with ``WATCH_STOPPED_EXIT_STATUS``.

Every rank sees the same all-reduced top-1, so every rank takes the same decision to stop; only global rank 0
prints, records and draws.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from omegaconf import DictConfig

from callbacks.findings import Finding, announce_findings
from callbacks.metric_names import VALIDATION_LABEL, validation_metrics
from callbacks.preemption import last_checkpoint
from callbacks.ranks import say
from callbacks.reference_curves import METRIC, Reference, ReferenceCurve, read_reference
from callbacks.stopping import stop_early
from recipes.durations import parse_time, run_steps, steps_in
from recipes.errors import UsageError
from recipes.schema import Task

# Distinct from 0 (done), 1 (a crash), 2 (a usage error), 3 (the doctor stopped it), 75 (preempted) and 143: the
# run was stopped for falling behind its reference; the checkpoint resumes it (with watch.stop_below=null to go on).
WATCH_STOPPED_EXIT_STATUS = 4
WATCH_PREFIX = "watch/"
REFERENCE_ACC1 = f"{WATCH_PREFIX}reference_acc1"
BAND = f"{WATCH_PREFIX}band"
# Evaluations in a row outside the band: negative under it, positive over it, 0 inside.
OUTSIDE_BAND = f"{WATCH_PREFIX}evaluations_outside_band"
CURVE_WATCH_PLOT = "curve_watch.png"
# One evaluation outside the band can be bad luck (about 1 in 20 by noise alone: the band is 2 standard deviations
# of the run-reference difference); two in a row rarely are, so two are a finding (and a stop).
EVALUATIONS_IN_A_ROW = 2
SOURCE = "curve_watch"


class BelowReference(Exception):
    """The curve watch stopped training; the message says where the run stood and how to go on."""


@dataclass(frozen=True)
class Comparison:
    """One evaluation against the reference; accuracies 0-1."""

    step: int
    fraction: float
    acc1: float
    # None before the reference's first evaluation: nothing to compare with.
    reference: float | None
    band: float

    @property
    def points_under(self) -> float:
        """How far under the reference, in points of top-1 (negative: over it)."""
        return 100 * (self.reference - self.acc1) if self.reference is not None else 0.0

    @property
    def side(self) -> int:
        """-1 under the band, +1 over it, 0 inside (or not compared)."""
        if self.reference is None or abs(self.points_under) <= 100 * self.band:
            return 0
        return -1 if self.points_under > 0 else 1

    def line(self) -> str:
        """What the run prints at this evaluation."""
        where = f"at {100 * self.fraction:.0f} % of the schedule: val top-1 {100 * self.acc1:.1f} %"
        if self.reference is None:
            return f"curve watch: {where}, before the reference's first evaluation (not compared)"
        gap = self.points_under
        verdict = f"{abs(gap):.1f} points {'under' if gap >= 0 else 'over'}"
        outside = {-1: ", under the band", 1: ", over the band", 0: ""}[self.side]
        return (
            f"curve watch: {where} against the reference's {100 * self.reference:.1f} % "
            f"(band ±{100 * self.band:.1f}): {verdict}{outside}"
        )


class CurveWatch(Callback):
    """Compares each validation top-1 with ``curve`` at the same fraction of ``total_steps``; see the module.

    Before ``grace_steps`` it only reports: early curves are steep, and a run a few steps ahead of or behind the
    reference is many points off it. From then on, evaluations outside the band (or ``stop_below`` points under
    the reference) are counted in a row.
    """

    def __init__(
        self,
        curve: ReferenceCurve,
        total_steps: int,
        output_folder: str | Path,
        save_folder: str,
        *,
        grace_steps: int = 0,
        stop_below: float | None = None,
        validation_images: int | None = None,
    ) -> None:
        self.curve = curve
        # The run's validation set size: its sampling noise is a floor under the band (ReferenceCurve.band).
        self.validation_images = validation_images
        self.total_steps = max(1, total_steps)
        self.output_folder = Path(output_folder)
        self.save_folder = save_folder
        self.grace_steps = grace_steps
        # Points of top-1 under the reference that stop the run (None: never).
        self.stop_below = stop_below
        self.comparisons: list[Comparison] = []
        # Judged evaluations in a row on one side of the band (negative: under it), and in a row past stop_below.
        self.outside_in_a_row = 0
        self.below_stop_in_a_row = 0
        # The finding that stopped training, and the checkpoint it saved, once it has.
        self.stopping: Finding | None = None
        self.checkpoint: str | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        grace = 100 * self.grace_steps / self.total_steps
        stop = f"; stops the run {self.stop_below:g} points under it" if self.stop_below is not None else ""
        say(
            f"curve watch: val top-1 against {self.curve.name}, by fraction of the schedule; band "
            f"{self.curve.describe_band(self.validation_images)}; judged from {grace:.0f} % of the schedule "
            f"on{stop}"
        )

    def eval_end(self, state: State, logger: Logger) -> None:
        if state.dataloader_label != VALIDATION_LABEL:
            return
        acc1 = validation_metrics(state).get(METRIC)
        if acc1 is None:
            return
        step = int(state.timestamp.batch)
        fraction = min(step / self.total_steps, 1.0)
        reference = self.curve.at(fraction)
        band = self.curve.band(reference, self.validation_images) if reference is not None else 0.0
        comparison = Comparison(step, fraction, acc1, reference, band)
        # The final weights evaluated again after fit (training.trainer) are the same evaluation, not a new one.
        repeated = bool(self.comparisons) and self.comparisons[-1].step == step
        if repeated:
            self.comparisons[-1] = comparison
        else:
            self.comparisons.append(comparison)
            self._count(comparison)
        say(comparison.line())
        if comparison.reference is not None:
            logger.log_metrics(
                {
                    REFERENCE_ACC1: comparison.reference,
                    BAND: comparison.band,
                    OUTSIDE_BAND: self.outside_in_a_row,
                }
            )
        if not repeated:
            self._judge(state, comparison)
        if dist.get_global_rank() == 0:
            plot_curve_watch(self, self.output_folder / CURVE_WATCH_PLOT, title=state.run_name)

    def _count(self, comparison: Comparison) -> None:
        """Extend or end the runs of judged evaluations outside the band and past the stopping line."""
        judged = comparison.reference is not None and comparison.step >= self.grace_steps
        side = comparison.side if judged else 0
        self.outside_in_a_row = self.outside_in_a_row + side if self.outside_in_a_row * side > 0 else side
        below_stop = judged and self.stop_below is not None and comparison.points_under >= self.stop_below
        self.below_stop_in_a_row = self.below_stop_in_a_row + 1 if below_stop else 0

    def _judge(self, state: State, comparison: Comparison) -> None:
        """The finding when the run has left the band for EVALUATIONS_IN_A_ROW evaluations; the stop."""
        if abs(self.outside_in_a_row) == EVALUATIONS_IN_A_ROW:
            announce_findings(self.output_folder, [self._left_band(comparison)])
        # At the schedule's end there is nothing left to save: the run ends anyway.
        if (
            self.stopping is None
            and self.below_stop_in_a_row >= EVALUATIONS_IN_A_ROW
            and comparison.fraction < 1
        ):
            self.stopping = Finding(
                "stopped_below_reference_curve",
                "error",
                f"val top-1 {100 * comparison.acc1:.1f} % at {100 * comparison.fraction:.0f} % of the schedule is "
                f"{comparison.points_under:.1f} points under {self.curve.name} ({100 * comparison.reference:.1f} "
                f"%), at least watch.stop_below={self.stop_below:g} under at {self.below_stop_in_a_row} "
                "evaluations in a row: stopped with a checkpoint",
                SOURCE,
                step=comparison.step,
            )
            announce_findings(self.output_folder, [self.stopping])
            stop_early(state, save_checkpoint=True)

    def _left_band(self, comparison: Comparison) -> Finding:
        """The warning for a run outside the band at EVALUATIONS_IN_A_ROW evaluations in a row."""
        numbers = (
            f"{100 * comparison.acc1:.1f} % against {100 * comparison.reference:.1f} ± {100 * comparison.band:.1f} "
            f"% at {100 * comparison.fraction:.0f} % of the schedule"
        )
        if self.outside_in_a_row < 0:
            return Finding(
                "below_reference_curve",
                "warning",
                f"val top-1 under the reference's band at {EVALUATIONS_IN_A_ROW} evaluations in a row ({numbers}, "
                f"{self.curve.name}): this run learns slower than the reference. Compare its recipe with the "
                "reference's (learning rate and its scaling, batch, warmup, augmentation strength); a run that "
                "will not catch up can be stopped with watch.stop_below",
                SOURCE,
                step=comparison.step,
            )
        return Finding(
            "above_reference_curve",
            "warning",
            f"val top-1 over the reference's band at {EVALUATIONS_IN_A_ROW} evaluations in a row ({numbers}, "
            f"{self.curve.name}): better than the reference, or not measured alike; check that the validation "
            "set, classes and evaluation resolution are the reference's",
            SOURCE,
            step=comparison.step,
        )

    def fit_end(self, state: State, logger: Logger) -> None:
        # Composer's CheckpointSaver saved the stopping state at the checkpoint event after the evaluation.
        if self.stopping is not None:
            saved = last_checkpoint(state)
            self.checkpoint = saved[0] if saved is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "comparisons": [vars(comparison) for comparison in self.comparisons],
            "outside_in_a_row": self.outside_in_a_row,
            "below_stop_in_a_row": self.below_stop_in_a_row,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.comparisons = [Comparison(**comparison) for comparison in state.get("comparisons", [])]
        self.outside_in_a_row = state.get("outside_in_a_row", 0)
        self.below_stop_in_a_row = state.get("below_stop_in_a_row", 0)


def plot_curve_watch(watch: CurveWatch, output_path: Path, title: str = "") -> Path:
    """Draw the run's top-1 so far over the reference and its band, from where judging starts, and the stopping
    line, by % of the schedule; evaluations under the band red, over it green."""
    from matplotlib.figure import Figure

    curve = watch.curve
    figure = Figure(figsize=(8, 4.8), layout="constrained")
    axes = figure.subplots()
    reference_x = [100 * fraction for fraction in curve.fractions]
    reference_y = [100 * value for value in curve.values]
    bands = [100 * curve.band(value, watch.validation_images) for value in curve.values]
    lower = [y - band for y, band in zip(reference_y, bands, strict=True)]
    upper = [y + band for y, band in zip(reference_y, bands, strict=True)]
    width = (
        f"±{min(bands):.1f}" if max(bands) - min(bands) < 0.05 else f"±{min(bands):.1f} to {max(bands):.1f}"
    )
    axes.fill_between(reference_x, lower, upper, color="tab:grey", alpha=0.25, label=f"band {width} points")
    axes.plot(reference_x, reference_y, color="tab:grey", linewidth=1.2, label=f"reference: {curve.name}")
    grace = 100 * watch.grace_steps / watch.total_steps
    if grace > 0:
        axes.axvline(grace, color="black", linestyle=":", linewidth=1, label="judged from here on")
    if watch.stop_below is not None:
        start = bisect.bisect_left(reference_x, grace)
        stopping = [y - watch.stop_below for y in reference_y[start:]]
        axes.plot(
            reference_x[start:],
            stopping,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"stops {watch.stop_below:g} points under (twice in a row)",
        )
    run_x = [100 * comparison.fraction for comparison in watch.comparisons]
    run_y = [100 * comparison.acc1 for comparison in watch.comparisons]
    axes.plot(run_x, run_y, color="tab:blue", linewidth=1.5, label="this run")
    colours = {-1: "tab:red", 0: "tab:blue", 1: "tab:green"}
    sides = [colours[comparison.side] for comparison in watch.comparisons]
    axes.scatter(run_x, run_y, c=sides, zorder=3, s=24)
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.set_xlabel("% of the schedule")
    axes.set_ylabel("val top-1 (%)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    axes.set_title(f"{title}: val top-1 against the reference".lstrip(": "), fontsize=10)
    figure.savefig(output_path, dpi=100)
    return output_path


def read_watch_reference(config: DictConfig) -> Reference | None:
    """The recipe's reference, read and checked before any work starts (None when watch.reference is null)."""
    watch = config.watch
    if watch.reference is None:
        return None
    if config.task == Task.moco_v3:
        raise UsageError(
            "watch.reference is set, but task=moco_v3 never evaluates val/acc1 (it pretrains without labels): "
            "watch its linear probe instead, or set watch.reference=null."
        )
    if watch.band is not None and watch.band <= 0:
        raise UsageError(
            f"watch.band is {watch.band}: give a positive number of points, or null to derive it."
        )
    if watch.stop_below is not None and watch.stop_below <= 0:
        raise UsageError(
            f"watch.stop_below is {watch.stop_below}: give a positive number of points, or null."
        )
    parse_time(watch.grace, "watch.grace")
    return read_reference(str(watch.reference), watch.band)


def build_curve_watch(
    config: DictConfig,
    reference: Reference | None,
    output_folder: str | Path,
    save_folder: str,
    batches_per_epoch: int,
    validation_images: int | None = None,
) -> list[Callback]:
    """The watch for this run (none without a reference): the reference curve nearest this run's length in
    epochs, compared over the run's steps."""
    if reference is None:
        return []
    total = run_steps(
        config.max_duration, batches_per_epoch=batches_per_epoch, global_batch_size=config.global_batch_size
    )
    grace = steps_in(
        config.watch.grace,
        "watch.grace",
        batches_per_epoch=batches_per_epoch,
        global_batch_size=config.global_batch_size,
        total_steps=total,
    )
    # The band sized on the part of the reference the watch judges (ReferenceCurve.judged_from).
    curve = reference.nearest(total / max(1, batches_per_epoch)).judged_from(grace / max(1, total))
    return [
        CurveWatch(
            curve,
            total,
            output_folder,
            save_folder,
            grace_steps=grace,
            stop_below=config.watch.stop_below,
            validation_images=validation_images,
        )
    ]


def raise_if_below_reference(callbacks: list[Callback]) -> None:
    """After the run's outputs are written: raise ``BelowReference`` if the curve watch stopped training."""
    for callback in callbacks:
        if isinstance(callback, CurveWatch) and callback.stopping is not None:
            saved = (
                f"checkpoint {callback.save_folder.rstrip('/')}/{callback.checkpoint}"
                if callback.checkpoint
                else "no checkpoint saved"
            )
            raise BelowReference(
                f"stopped by the curve watch: {callback.stopping.line()}; {saved}; to train on anyway, relaunch "
                f"with watch.stop_below=null (autoresume=true resumes from it) "
                f"(exit status {WATCH_STOPPED_EXIT_STATUS})"
            )
