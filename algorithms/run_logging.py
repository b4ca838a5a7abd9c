"""Run outputs Composer lacks: metrics under short stable names, and a JSON-lines metrics file.

Composer logs ``metrics/val/acc1``, ``loss/train/total`` and ``lr-DecoupledSGDW/group0``; people and the tools
built on this project read ``val/acc1``, ``train/loss`` and ``lr``. ``StableMetricNames`` logs those names to
every destination (console, wandb, the file); ``MetricsFile`` writes one JSON line per logged step or eval.
Under DDP, ``RankZeroBuffers`` makes the reported validation metrics those of rank 0's (checkpointed) weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TextIO

import torch
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist
from omegaconf import DictConfig

VALIDATION_LABEL = "val"
# Composer's own names for what StableMetricNames re-logs, and its clock counters (each line carries step and
# epoch already): the metrics file leaves them out to stay readable.
COMPOSER_DUPLICATE_PREFIXES = ("metrics/", "loss/", "lr-", "time/", "trainer/")


def _as_float(value: Any) -> float:
    """A plain float from a tensor, a number or a dict of losses (summed, as Composer does for the total)."""
    if isinstance(value, dict):
        return sum(_as_float(v) for v in value.values())
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


def validation_metrics(state: State) -> dict[str, float]:
    """The current validation metrics as ``val/<name>`` floats (what train.py reports and evaluate.py prints)."""
    metrics = state.eval_metrics.get(VALIDATION_LABEL, {})
    return {f"{VALIDATION_LABEL}/{name}": _as_float(metric.compute()) for name, metric in metrics.items()}


class StableMetricNames(Callback):
    """Logs ``train/loss``, ``train/acc1``, ``lr`` each batch and ``val/acc1``, ``val/acc5``, ``val/loss`` per eval."""

    def batch_end(self, state: State, logger: Logger) -> None:
        # Composer's total is the batch's mean over every rank and microbatch; `state.loss` is only this rank's
        # last microbatch (trainer.py `_train_loop`, composer 0.32.1).
        loss = state.total_loss_dict.get("loss/train/total", state.loss)
        metrics = {"train/loss": _as_float(loss), "lr": state.optimizers[0].param_groups[0]["lr"]}
        if "acc1" in state.train_metric_values:
            metrics["train/acc1"] = _as_float(state.train_metric_values["acc1"])
        logger.log_metrics(metrics)

    def eval_end(self, state: State, logger: Logger) -> None:
        logger.log_metrics(validation_metrics(state))


class RankZeroBuffers(Callback):
    """Gives every rank rank 0's buffers (BatchNorm running statistics) before each evaluation.

    DDP keeps parameters identical, but each rank updates its BatchNorm running statistics from its own shard,
    and rank 0's are re-broadcast only at the start of the next training forward. Composer evaluates through
    the unwrapped model (``Trainer._original_model.eval_forward``, composer 0.32.1), so without this each rank
    scores its part of the validation set with different statistics, and the reported metrics are not those
    of the weights rank 0 checkpoints. Runs after the algorithms, so EMA's swapped-in buffers are the ones sent.
    """

    def eval_start(self, state: State, logger: Logger) -> None:
        if dist.get_world_size() > 1:
            for buffer in state.model.buffers():
                dist.broadcast(buffer, src=0)


class MetricsFile(LoggerDestination):
    """Writes ``metrics.jsonl``: a training line every ``every_n_batches`` steps and a line for each eval.

    Each line carries the step and epoch, so a crashed run's curve can be plotted from the file
    alone. A training line is written once the next step starts logging (or at the end), so it holds everything
    logged for its step whatever order the callbacks ran in. Only global rank 0 writes.
    """

    def __init__(
        self,
        folder: str | Path,
        every_n_batches: int = 10,
        append: bool = False,
        filename: str = "metrics.jsonl",
    ) -> None:
        self.path = Path(folder) / filename
        # An autoresumed run continues its file; a fresh run into the same folder starts a new one.
        self.mode = "a" if append else "w"
        self.every_n_batches = max(1, every_n_batches)
        self.step: int | None = None
        self.pending: dict[str, Any] = {}
        self.latest: dict[str, float] = {}
        self._state: State | None = None
        self._file: TextIO | None = None

    def init(self, state: State, logger: Logger) -> None:
        self._state = state
        if dist.get_global_rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open(self.mode, encoding="utf-8")

    def _line(self, phase: str, step: int, values: dict[str, Any]) -> None:
        if self._file is None or not values:
            return
        timestamp = self._state.timestamp if self._state is not None else None
        line: dict[str, Any] = {"phase": phase, "step": step}
        if timestamp is not None:
            line["epoch"] = int(timestamp.epoch)
        line.update(values)
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def _flush_train(self, force: bool = False) -> None:
        if self.step is not None and (force or self.step % self.every_n_batches == 0):
            self._line("train", self.step, self.pending)
        self.pending = {}

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {}
        for name, value in metrics.items():
            if name.startswith(COMPOSER_DUPLICATE_PREFIXES):
                continue
            try:
                number = _as_float(value)
            except (TypeError, ValueError):
                continue
            values[name] = number if math.isfinite(number) else str(number)
            self.latest[name] = number
        if not values:
            return
        if any(name.startswith(f"{VALIDATION_LABEL}/") for name in values):
            self._line("eval", int(step or 0), values)
            return
        if step != self.step:
            self._flush_train()
            self.step = step
        self.pending.update(values)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._flush_train(force=True)

    def close(self, state: State, logger: Logger) -> None:
        self._flush_train()
        if self._file is not None:
            self._file.close()
            self._file = None


def build_loggers(
    logging_cfg: DictConfig, folder: str | Path, run_name: str, recipe: dict[str, Any], resume: bool = False
) -> tuple[list[LoggerDestination], MetricsFile]:
    """The metrics file always, and Composer's wandb logger when the recipe asks for it."""
    metrics_file = MetricsFile(folder, every_n_batches=logging_cfg.metrics_every_n_batches, append=resume)
    destinations: list[LoggerDestination] = [metrics_file]
    if logging_cfg.wandb:
        from composer.loggers import WandBLogger

        destinations.append(
            WandBLogger(
                project=logging_cfg.wandb_project,
                entity=logging_cfg.wandb_entity,
                name=run_name,
                init_kwargs={"mode": logging_cfg.wandb_mode, "dir": str(folder), "config": recipe},
            )
        )
    return destinations, metrics_file


def build_callbacks(device: str) -> list[Callback]:
    """Stable metric names and throughput always; rank 0's buffers under DDP; GPU memory when on a GPU."""
    from composer.callbacks import MemoryMonitor, SpeedMonitor

    callbacks: list[Callback] = [StableMetricNames(), SpeedMonitor(window_size=50)]
    if dist.get_world_size() > 1:
        callbacks.insert(0, RankZeroBuffers())
    if device == "gpu":
        callbacks.append(MemoryMonitor())
    return callbacks
