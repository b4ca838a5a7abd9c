"""The budget guard: what the run will take and cost, projected from its own measured pace, and a stop before the
money (or the hours) run out.

Each training step is timed from the moment its batch is asked for to the end of the step (data wait included,
evaluation and checkpoints not), per image side: the first ``WARMUP_STEPS`` steps at each side are left out
(cuDNN autotuning, allocator growth, a loader's first batches), and a new side is measured afresh, since
progressive resizing makes later steps dearer. The steps still to come are priced at the side the run's
resolution schedule gives them (``algorithms.resolutions``, the planner's); a side not yet seen is scaled from
the nearest measured one by its pixels. Evaluation, checkpoints and the rest are counted as measured: the wall
clock of this launch against its training steps gives the overhead per training second. Earlier launches of a
resumed run (a spot relaunch) are counted from ``budget.json`` in the run folder (and the checkpoint's copy),
written at every epoch and at the end of ``fit``.

Once an epoch (at ``EPOCH_CHECKPOINT``, after the epoch's evaluation) the run prints one line and logs
``budget/*`` to ``metrics.jsonl`` and wandb. A projection past ``budget.max_usd`` or ``budget.max_hours`` is a
warning (a finding, once); when the spend plus the next epoch would pass a limit, the guard stops training there,
Composer's CheckpointSaver (after this callback at the same event) saves the checkpoint, and train.py exits with
``BUDGET_STOPPED_EXIT_STATUS``. The decision is rank 0's, broadcast, so every rank stops at the same epoch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from callbacks.findings import Finding, announce_findings
from callbacks.preemption import last_checkpoint
from callbacks.ranks import say
from callbacks.stopping import stop_early

# Distinct from 0 (done), 1 (a crash), 2 (a usage error), 3 (the doctor stopped it), 4 (the curve watch stopped
# it), 75 (preempted) and 143: the run stopped before passing its budget; relaunched with a raised limit it resumes.
BUDGET_STOPPED_EXIT_STATUS = 5
BUDGET_PREFIX = "budget/"
SPEND_FILE = "budget.json"
# Steps at each image side left out of the measured pace (a new side pays cuDNN's autotuning again).
WARMUP_STEPS = 3
SOURCE = "budget_guard"


class OverBudget(Exception):
    """The budget guard stopped the run (or refused to start it); the message names the limit to raise."""


def wall_clock() -> float:
    """Seconds on a clock that only moves forward (the guard's default clock)."""
    return time.monotonic()


def cost_usd(hours: float, usd_per_hour: float | None) -> float | None:
    """What ``hours`` of the machine cost (None without a price): the planner's rule and the guard's."""
    return None if usd_per_hour is None else hours * usd_per_hour


def format_hours(hours: float) -> str:
    """Hours as a person reads them: minutes under an hour."""
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.1f} h"


@dataclass(frozen=True)
class Price:
    """The machine's hourly price and where it comes from (or, with no price, why none)."""

    usd_per_hour: float | None
    source: str


@dataclass
class Spend:
    """What the run has taken so far, over all its launches."""

    hours: float = 0.0
    # None when a launch ran without a known price.
    usd: float | None = 0.0
    launches: int = 0
    # The last projection's next epoch, in hours: a relaunch refuses to start an epoch that would pass a limit.
    next_epoch_hours: float = 0.0
    # The last projection's time left, in hours: what a relaunch suggests raising a limit by.
    hours_left: float = 0.0


@dataclass(frozen=True)
class Projection:
    """Where the run stands at an epoch's end, and where it is heading."""

    epoch: int
    epochs: int
    spent: Spend
    hours_left: float
    # The next epoch's wall time (training, evaluation, checkpoints), in hours.
    next_epoch_hours: float
    seconds_per_step: float
    usd_per_hour: float | None

    @property
    def projected_hours(self) -> float:
        return self.spent.hours + self.hours_left

    @property
    def projected_usd(self) -> float | None:
        left = cost_usd(self.hours_left, self.usd_per_hour)
        return None if left is None or self.spent.usd is None else self.spent.usd + left

    def crossed_by_next_epoch(self, max_usd: float | None, max_hours: float | None) -> list[str]:
        """The limits the spend would pass during the next epoch (as the keys that set them)."""
        crossed = []
        if max_hours is not None and self.spent.hours + self.next_epoch_hours > max_hours:
            crossed.append("max_hours")
        next_usd = cost_usd(self.next_epoch_hours, self.usd_per_hour)
        if max_usd is not None and next_usd is not None and (self.spent.usd or 0.0) + next_usd > max_usd:
            crossed.append("max_usd")
        return crossed

    def line(self, max_usd: float | None, max_hours: float | None, price_source: str) -> str:
        """The line the run prints once an epoch."""
        parts = [f"epoch {self.epoch}/{self.epochs}", f"{format_hours(self.hours_left)} left"]
        projected = self.projected_usd
        if projected is None:
            parts.append(f"{format_hours(self.spent.hours)} so far")
        else:
            parts.append(f"${self.spent.usd:,.2f} so far")
            limit = f" of a ${max_usd:,.2f} budget" if max_usd is not None else ""
            parts.append(f"projected ${projected:,.2f}{limit}")
        if max_hours is not None or projected is None:
            limit = f" of a {max_hours:g} h limit" if max_hours is not None else ""
            parts.append(f"projected {format_hours(self.projected_hours)}{limit}")
        if projected is None:
            parts.append(f"cost unknown ({price_source})")
        return "budget: " + " · ".join(parts)


@dataclass
class SideTiming:
    """Training steps measured at one image side: how many seen, and the time of those past the warm-up."""

    seen: int = 0
    warmup_seconds: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.seen += 1
        if self.seen <= WARMUP_STEPS:
            self.warmup_seconds += seconds
        else:
            self.steps += 1
            self.seconds += seconds

    @property
    def seconds_per_step(self) -> float:
        """The pace after the warm-up; the warm-up's own while nothing else is measured yet."""
        return self.seconds / self.steps if self.steps else self.warmup_seconds / self.seen


class BudgetGuard(Callback):
    """Projects finish time and cost once an epoch, warns past a limit and stops before one; see the module.

    ``segments`` is the run's resolution schedule, (steps, side the network sees) from its first step to its
    last. ``clock`` gives seconds (``time.monotonic``; tests pass a fake one).
    """

    def __init__(
        self,
        price: Price,
        segments: list[tuple[int, int]],
        batches_per_epoch: int,
        output_folder: str | Path,
        save_folder: str,
        *,
        max_usd: float | None = None,
        max_hours: float | None = None,
        resuming: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.price = price
        self.segments = segments
        self.total_steps = sum(steps for steps, _ in segments)
        self.batches_per_epoch = max(1, batches_per_epoch)
        self.output_folder = Path(output_folder)
        self.save_folder = save_folder
        self.max_usd = max_usd
        self.max_hours = max_hours
        # An autoresumed launch reads the spend file even before its first checkpoint exists.
        self.resuming = resuming
        self.clock = clock if clock is not None else wall_clock
        self.launch_started = self.clock()
        self.earlier = Spend()
        self._checkpoint_spend: Spend | None = None
        self.fit_started: float | None = None
        self.train_seconds = 0.0
        self.sides: dict[int, SideTiming] = {}
        self._step_started: float | None = None
        self.warned: set[str] = set()
        self.last: Projection | None = None
        # The finding that stopped training, the limits it names, and the checkpoint it saved.
        self.stopping: Finding | None = None
        self.crossed: list[str] = []
        self.checkpoint: str | None = None

    # ---- what has been spent ----

    def spent(self) -> Spend:
        """Earlier launches plus this one up to now."""
        hours = (self.clock() - self.launch_started) / 3600
        now = cost_usd(hours, self.price.usd_per_hour)
        usd = None if now is None or self.earlier.usd is None else self.earlier.usd + now
        spend = Spend(self.earlier.hours + hours, usd, self.earlier.launches + 1)
        projected = self.last if self.last is not None else self.earlier
        spend.next_epoch_hours, spend.hours_left = projected.next_epoch_hours, projected.hours_left
        return spend

    def _write_spend(self) -> None:
        if dist.get_global_rank() != 0:
            return
        self.output_folder.mkdir(parents=True, exist_ok=True)
        record = asdict(self.spent()) | {
            "usd_per_hour": self.price.usd_per_hour,
            "price_source": self.price.source,
        }
        (self.output_folder / SPEND_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    def _read_earlier(self, state: State) -> Spend:
        """Earlier launches' spend: the file (written at every epoch) or the checkpoint's copy, the larger."""
        found = [spend for spend in (self._checkpoint_spend,) if spend is not None]
        if dist.get_global_rank() == 0:
            path = self.output_folder / SPEND_FILE
            resumed = self.resuming or int(state.timestamp.batch) > 0
            if resumed and path.exists():
                record = json.loads(path.read_text(encoding="utf-8"))
                found.append(
                    Spend(**{key: record[key] for key in Spend.__dataclass_fields__ if key in record})
                )
        earliest = max(found, key=lambda spend: spend.hours, default=Spend())
        if dist.get_world_size() > 1:
            shared = [earliest]
            dist.broadcast_object_list(shared, src=0)
            earliest = shared[0]
        return earliest

    # ---- Composer events ----

    def fit_start(self, state: State, logger: Logger) -> None:
        self.earlier = self._read_earlier(state)
        self.fit_started = self.clock()
        price = self.price.usd_per_hour
        limits = [f"budget.max_usd=${self.max_usd:,.2f}" if self.max_usd is not None else "",
                  f"budget.max_hours={self.max_hours:g}" if self.max_hours is not None else ""]  # fmt: skip
        limit_text = " and ".join(limit for limit in limits if limit) or "no limit"
        earlier = ""
        if self.earlier.launches:
            usd = f"${self.earlier.usd:,.2f}, " if self.earlier.usd is not None else ""
            earlier = (
                f"; earlier launches ({self.earlier.launches}) took {usd}{format_hours(self.earlier.hours)}"
            )
        say(
            f"budget guard: {'cost unknown' if price is None else f'${price:g}/h'} ({self.price.source}); "
            f"{limit_text}{earlier}"
        )
        over = self._already_over()
        if over:
            self._write_spend()  # this launch's start-up was paid for too
            raise OverBudget(
                f"the budget is spent before this launch trains: {'; '.join(over.values())}; nothing "
                f"was trained. To go on, raise the limit (e.g. {self._raise_hint(list(over))}) and relaunch "
                f"(exit status {BUDGET_STOPPED_EXIT_STATUS})"
            )

    def _already_over(self) -> dict[str, str]:
        """The limits the earlier launches have used up, or would pass with the next epoch as they last
        projected it (by key), in words."""
        earlier, over = self.earlier, {}
        next_hours = earlier.next_epoch_hours
        next_usd = cost_usd(next_hours, self.price.usd_per_hour) or 0.0
        then = f" and the next epoch would take {format_hours(next_hours)}" if next_hours else ""
        if self.max_usd is not None and earlier.usd is not None and earlier.usd + next_usd > self.max_usd:
            cost = f" (${next_usd:,.2f})" if then else ""
            over["max_usd"] = (
                f"earlier launches spent ${earlier.usd:,.2f}{then}{cost}, against budget.max_usd="
                f"${self.max_usd:,.2f}"
            )
        if self.max_hours is not None and earlier.hours + next_hours > self.max_hours:
            over["max_hours"] = (
                f"earlier launches took {earlier.hours:.2f} h{then}, against budget.max_hours={self.max_hours:g}"
            )
        return over

    def before_dataloader(self, state: State, logger: Logger) -> None:
        self._step_started = self.clock()

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._step_started is None:
            return
        seconds = self.clock() - self._step_started
        self._step_started = None
        self.train_seconds += seconds
        self.sides.setdefault(batch_side(state.batch), SideTiming()).add(seconds)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        projection = self.project(int(state.timestamp.batch), int(state.timestamp.epoch))
        if projection is None:
            return
        self.last = projection
        say(projection.line(self.max_usd, self.max_hours, self.price.source))
        metrics = {
            f"{BUDGET_PREFIX}spent_hours": projection.spent.hours,
            f"{BUDGET_PREFIX}hours_left": projection.hours_left,
            f"{BUDGET_PREFIX}projected_hours": projection.projected_hours,
            f"{BUDGET_PREFIX}seconds_per_step": projection.seconds_per_step,
        }
        if projection.projected_usd is not None:
            metrics[f"{BUDGET_PREFIX}spent_usd"] = projection.spent.usd
            metrics[f"{BUDGET_PREFIX}projected_usd"] = projection.projected_usd
        logger.log_metrics(metrics)
        self._warn(projection, int(state.timestamp.batch))
        if int(state.timestamp.batch) < self.total_steps and self.stopping is None:
            crossed = agree(projection.crossed_by_next_epoch(self.max_usd, self.max_hours))
            if crossed:
                self._stop(state, projection, crossed)
        self._write_spend()

    def fit_end(self, state: State, logger: Logger) -> None:
        self._write_spend()
        # Composer's CheckpointSaver saved the stopping state at the epoch checkpoint event.
        if self.stopping is not None:
            saved = last_checkpoint(state)
            self.checkpoint = saved[0] if saved is not None else None

    # ---- the projection ----

    def seconds_per_step(self, side: int) -> float | None:
        """A training step's time at ``side``: measured there, else scaled by pixels from the nearest side measured."""
        if side in self.sides:
            return self.sides[side].seconds_per_step
        if not self.sides:
            return None
        nearest = min(self.sides, key=lambda measured: (abs(measured - side), -measured))
        return self.sides[nearest].seconds_per_step * (side / nearest) ** 2 if nearest else None

    def training_seconds(self, first: int, last: int) -> float:
        """The training time of steps ``first`` to ``last`` (exclusive), at the sides the schedule gives them."""
        total, start = 0.0, 0
        for steps, side in self.segments:
            overlap = min(last, start + steps) - max(first, start)
            if overlap > 0:
                total += overlap * (self.seconds_per_step(side) or 0.0)
            start += steps
        return total

    def overhead_per_training_second(self) -> float:
        """Evaluation, checkpoints and the rest: this launch's wall clock past its training steps, per training
        second."""
        if self.fit_started is None or self.train_seconds <= 0:
            return 0.0
        wall = self.clock() - self.fit_started
        return max(0.0, wall - self.train_seconds) / self.train_seconds

    def project(self, step: int, epoch: int) -> Projection | None:
        """Where the run stands after ``step`` steps (``epoch`` epochs); None before any step is measured."""
        if not self.sides:
            return None
        scale = 1 + self.overhead_per_training_second()
        left = self.training_seconds(step, self.total_steps) * scale
        next_epoch = self.training_seconds(step, step + self.batches_per_epoch) * scale
        current = self.seconds_per_step(self._side_at(step)) or 0.0
        return Projection(
            epoch=epoch,
            epochs=math.ceil(self.total_steps / self.batches_per_epoch),
            spent=self.spent(),
            hours_left=left / 3600,
            next_epoch_hours=next_epoch / 3600,
            seconds_per_step=current,
            usd_per_hour=self.price.usd_per_hour,
        )

    def _side_at(self, step: int) -> int:
        start = 0
        for steps, side in self.segments:
            if step < start + steps:
                return side
            start += steps
        return self.segments[-1][1] if self.segments else 0

    # ---- warning and stop ----

    def _warn(self, projection: Projection, step: int) -> None:
        """A finding, once per limit, when the projection passes it."""
        over = []
        if self.max_usd is not None and (projection.projected_usd or 0.0) > self.max_usd:
            over.append(
                ("max_usd", f"${projection.projected_usd:,.2f} against budget.max_usd=${self.max_usd:,.2f}")
            )
        if self.max_hours is not None and projection.projected_hours > self.max_hours:
            over.append(
                (
                    "max_hours",
                    f"{projection.projected_hours:.2f} h against budget.max_hours={self.max_hours:g}",
                )
            )
        for key, numbers in over:
            if key in self.warned:
                continue
            self.warned.add(key)
            announce_findings(
                self.output_folder,
                [
                    Finding(
                        "budget_projected_over",
                        "warning",
                        f"at epoch {projection.epoch}/{projection.epochs} the run is projected to take {numbers}: "
                        "it will stop with a checkpoint at the last epoch end before passing it. Raise "
                        f"budget.{key}, or shorten the run (max_duration), to finish it",
                        SOURCE,
                        step=step,
                    )
                ],
            )

    def _stop(self, state: State, projection: Projection, crossed: list[str]) -> None:
        spent = f"{format_hours(projection.spent.hours)}" + (
            f", ${projection.spent.usd:,.2f}" if projection.spent.usd is not None else ""
        )
        next_usd = cost_usd(projection.next_epoch_hours, projection.usd_per_hour)
        next_cost = f"{format_hours(projection.next_epoch_hours)}" + (
            f", ${next_usd:,.2f}" if next_usd is not None else ""
        )
        self.crossed = crossed
        self.stopping = Finding(
            "stopped_before_budget",
            "error",
            f"after epoch {projection.epoch}/{projection.epochs} the run has taken {spent} and the next epoch "
            f"would take {next_cost}, passing {', '.join(f'budget.{key}' for key in crossed)}: stopped with a "
            "checkpoint",
            SOURCE,
            step=int(state.timestamp.batch),
        )
        announce_findings(self.output_folder, [self.stopping])
        stop_early(state, save_checkpoint=True)

    def _raise_hint(self, keys: list[str]) -> str:
        """``budget.KEY=VALUE`` for each limit: 10 % over the spend so far plus the time left as last projected, in
        cents or hundredths of an hour, rounded up."""
        spend, hints = self.spent(), []
        for key in keys:
            if key == "max_usd":
                total = (spend.usd or 0.0) + (cost_usd(spend.hours_left, self.price.usd_per_hour) or 0.0)
                hints.append(f"budget.max_usd={math.ceil(110 * total) / 100:g}")
            else:
                hints.append(f"budget.max_hours={math.ceil(110 * (spend.hours + spend.hours_left)) / 100:g}")
        return " ".join(hints)

    def stopped_message(self) -> str:
        """The line train.py prints when the guard stopped the run."""
        stopping = self.stopping.message if self.stopping is not None else "not stopped"
        saved = (
            f"checkpoint {self.save_folder.rstrip('/')}/{self.checkpoint}"
            if self.checkpoint
            else "no checkpoint saved"
        )
        return (
            f"stopped by the budget guard: {stopping}; {saved}; to finish, relaunch with "
            f"{self._raise_hint(self.crossed)} (autoresume=true resumes from the checkpoint) "
            f"(exit status {BUDGET_STOPPED_EXIT_STATUS})"
        )

    # ---- checkpoint ----

    def state_dict(self) -> dict[str, Any]:
        return {"spend": asdict(self.spent())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "spend" in state:
            self._checkpoint_spend = Spend(**state["spend"])


def batch_side(batch: Any) -> int:
    """The side of the first image tensor in a batch (a view's, for two-view batches); 0 when there is none."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[-1]) if batch.ndim == 4 else 0
    if isinstance(batch, list | tuple):
        for item in batch:
            side = batch_side(item)
            if side:
                return side
    if isinstance(batch, dict):
        return batch_side(list(batch.values()))
    return 0


def agree(crossed: list[str]) -> list[str]:
    """Rank 0's limits crossed, on every rank: each rank's clock differs a little, and all must stop alike."""
    decision = [crossed]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    return decision[0]


def raise_if_over_budget(callbacks: list[Callback]) -> None:
    """After ``fit``: raise ``OverBudget`` if the budget guard stopped training."""
    for callback in callbacks:
        if isinstance(callback, BudgetGuard) and callback.stopping is not None:
            raise OverBudget(callback.stopped_message())
