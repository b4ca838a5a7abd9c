"""Where a training step's time went, over the profiler's active batches, per rank: the seed's "communication
profiler" as numbers, beside the trace.

The torch trace shows every operator, but not the answer people want first: is this run waiting on data, on
compute, on the optimizer or on the network? ``StepBreakdown`` times each active batch (the batches Composer's
profiler schedule records) from Composer's own events:

* data wait: ``BEFORE_DATALOADER`` to ``AFTER_DATALOADER``: the loader's next batch, Composer's check that no
  rank's loader has run out (a one-number all-reduce under DDP, so a rank waits here for the slowest loader) and
  the batch transforms;
* forward: ``BEFORE_FORWARD`` to ``AFTER_FORWARD`` plus ``BEFORE_LOSS`` to ``AFTER_LOSS``, over the microbatches;
* backward: ``BEFORE_BACKWARD`` to ``AFTER_BACKWARD``, including any wait for the gradient all-reduce DDP did
  not hide behind it;
* optimizer: the optimizer's ``step`` (torch's step pre/post hooks), less the forward and backward passes a
  closure optimizer (SAM) runs inside it;
* other: the rest of the step up to ``BATCH_END`` (moving the batch to the device, callbacks, the loss
  all-reduce, metrics);
* all-reduce: under DDP, the time a gradient bucket's all-reduce was in flight (a DDP communication hook around
  PyTorch's default one; overlapping buckets count once). It overlaps backward, so it is not a share of the
  step: ``all_reduce_ms`` next to ``backward_ms`` says how much of the network time the backward pass hides.

On a GPU each boundary of an active batch synchronises the device, so that a phase's time is its kernels' and not
their launch; that costs the active batches a little speed, which is why only they pay it. Under FSDP there is no
DDP hook and all-reduce is not measured (the torch trace shows FSDP's collectives).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.profiler import ProfilerAction
from composer.utils import dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from callbacks.ranks import say

BREAKDOWN_FILE = "step_breakdown.json"
PHASES = ("data_wait", "forward", "backward", "optimizer", "other")
RECORDED = (ProfilerAction.ACTIVE, ProfilerAction.ACTIVE_AND_SAVE)


def covered_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    """The length of the union of ``intervals`` (overlapping all-reduces count once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class StepBreakdown(Callback):
    """Times the profiler's active batches by phase on every rank; rank 0 prints the table and writes
    ``<folder>/step_breakdown.json`` at the end of the fit."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.all_reduce_s = 0.0
        self.all_reduce_buckets = 0
        self.steps = 0
        self.recording = False
        self.sync = False
        self.marks: dict[str, float] = {}
        self.in_flight: list[tuple[float, float]] = []
        self.passes_in_optimizer = 0.0
        self.optimizer_depth = 0

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def passes(self) -> float:
        return self.seconds["forward"] + self.seconds["backward"]

    def accounted(self) -> float:
        """Seconds in every phase but ``other`` so far (``other`` is a step's remainder)."""
        return sum(self.seconds[phase] for phase in PHASES if phase != "other")

    # Hooks installed at FIT_START (the model is DDP-wrapped and the optimizers exist by then).

    def fit_start(self, state: State, logger: Logger) -> None:
        self.sync = state.device.name == "gpu" and torch.cuda.is_available()
        for optimizer in state.optimizers:
            optimizer.register_step_pre_hook(self.optimizer_started)
            optimizer.register_step_post_hook(self.optimizer_finished)
        if isinstance(state.model, DistributedDataParallel):
            state.model.register_comm_hook(None, self.timed_all_reduce)

    def optimizer_started(self, *_: Any) -> None:
        # Nested: an optimizer subclass whose step calls super().step() runs the hooks once per patched level
        # (torch wraps each class's step that an instance was made of); only the outermost call counts.
        self.optimizer_depth += 1
        if self.recording and self.optimizer_depth == 1:
            self.marks["optimizer"] = self.now()
            self.passes_in_optimizer = self.passes()

    def optimizer_finished(self, *_: Any) -> None:
        self.optimizer_depth -= 1
        if self.recording and self.optimizer_depth == 0 and "optimizer" in self.marks:
            inside = self.passes() - self.passes_in_optimizer  # a closure's forward and backward passes
            self.seconds["optimizer"] += self.now() - self.marks.pop("optimizer") - inside

    def timed_all_reduce(self, _, bucket):
        """PyTorch's default all-reduce of a gradient bucket, timed from launch to completion when recording.

        Unannotated on purpose: DDP refuses a hook whose ``bucket`` annotation is not ``dist.GradBucket`` itself,
        and this module's annotations are strings (``from __future__ import annotations``)."""
        future = default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]
        if not self.recording:
            return future
        launched = time.perf_counter()

        def finished(done: torch.futures.Future) -> torch.Tensor:
            self.in_flight.append((launched, time.perf_counter()))
            return done.value()

        return future.then(finished)

    # The phases, from Composer's events.

    def start(self, name: str) -> None:
        if self.recording:
            self.marks[name] = self.now()

    def stop(self, name: str, phase: str) -> None:
        if self.recording and name in self.marks:
            self.seconds[phase] += self.now() - self.marks.pop(name)

    def before_dataloader(self, state: State, logger: Logger) -> None:
        # The schedule's action for the batch about to be drawn (the timestamp still counts the batches done).
        self.recording = state.profiler is not None and state.profiler.schedule(state) in RECORDED
        if self.recording:
            self.step_started = self.now()
            self.step_accounted = self.accounted()
            self.in_flight = []
            self.start("data_wait")

    def after_dataloader(self, state: State, logger: Logger) -> None:
        self.stop("data_wait", "data_wait")

    def before_forward(self, state: State, logger: Logger) -> None:
        self.start("forward")

    def after_forward(self, state: State, logger: Logger) -> None:
        self.stop("forward", "forward")

    def before_loss(self, state: State, logger: Logger) -> None:
        self.start("loss")

    def after_loss(self, state: State, logger: Logger) -> None:
        self.stop("loss", "forward")

    def before_backward(self, state: State, logger: Logger) -> None:
        self.start("backward")

    def after_backward(self, state: State, logger: Logger) -> None:
        self.stop("backward", "backward")

    def batch_end(self, state: State, logger: Logger) -> None:
        if not self.recording:
            return
        step = self.now() - self.step_started
        self.seconds["other"] += max(0.0, step - (self.accounted() - self.step_accounted))
        self.all_reduce_s += covered_seconds(self.in_flight)
        self.all_reduce_buckets += len(self.in_flight)
        self.steps += 1
        self.recording = False

    def report(self) -> dict[str, Any]:
        """This rank's mean milliseconds per active step, by phase, and the shares of the step."""
        steps = max(self.steps, 1)
        milliseconds = {f"{phase}_ms": round(1000 * self.seconds[phase] / steps, 2) for phase in PHASES}
        step_ms = sum(milliseconds.values())
        return {
            "steps": self.steps,
            "step_ms": round(step_ms, 2),
            **milliseconds,
            "all_reduce_ms": round(1000 * self.all_reduce_s / steps, 2) if self.all_reduce_buckets else None,
            "all_reduce_buckets_per_step": round(self.all_reduce_buckets / steps, 1),
            "share": {
                phase: round(milliseconds[f"{phase}_ms"] / step_ms, 3) if step_ms else 0.0 for phase in PHASES
            },
        }

    def fit_end(self, state: State, logger: Logger) -> None:
        reports = dist.all_gather_object(self.report())
        if dist.get_global_rank() != 0 or not any(report["steps"] for report in reports):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        breakdown = {"ranks": reports, "device": state.device.name, "synchronised": self.sync}
        (self.folder / BREAKDOWN_FILE).write_text(json.dumps(breakdown, indent=2) + "\n", encoding="utf-8")
        say(format_breakdown(reports, self.folder / BREAKDOWN_FILE))


def format_breakdown(reports: list[dict[str, Any]], path: Path) -> str:
    """The per-rank table of milliseconds per active step."""
    header = (
        f"{'':8}{'step ms':>9}{'data wait':>11}{'forward':>9}{'backward':>10}{'optimizer':>11}{'other':>8}"
    )
    lines = [
        f"profiler: where a step's time went ({reports[0]['steps']} active steps per rank; {path})",
        header,
    ]
    for rank, report in enumerate(reports):
        cells = "".join(
            f"{report[f'{phase}_ms']:>{width}.1f}"
            for phase, width in zip(PHASES, (11, 9, 10, 11, 8), strict=True)
        )
        lines.append(f"rank {rank:<3}{report['step_ms']:>9.1f}{cells}")
    if reports[0]["all_reduce_ms"] is not None:
        lines.append(
            "all-reduce in flight per step (overlaps backward): "
            + ", ".join(
                f"rank {rank} {report['all_reduce_ms']:.1f} ms" for rank, report in enumerate(reports)
            )
        )
    return "\n".join(lines)
