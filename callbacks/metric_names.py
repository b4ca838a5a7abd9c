"""Metrics under short stable names: ``train/loss``, ``train/acc1``, ``lr`` each batch, ``val/acc1``,
``val/acc5``, ``val/loss`` per evaluation.

Composer logs ``metrics/val/acc1``, ``loss/train/total`` and ``lr-DecoupledSGDW/group0``; people and the tools
built on this project read ``val/acc1``, ``train/loss`` and ``lr``. ``StableMetricNames`` logs those names to
every destination (console, wandb, the metrics file).
"""

from __future__ import annotations

from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger

from callbacks.step_readings import Contribution, ReadsStep

VALIDATION_LABEL = "val"
TRAIN_LOSS = "train/loss"
TRAIN_ACC1 = "train/acc1"


def as_float(value: Any) -> float:
    """A plain float from a tensor, a number or a dict of losses (summed, as Composer does for the total)."""
    if isinstance(value, dict):
        return sum(as_float(v) for v in value.values())
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


def batch_loss(state: State) -> float:
    """The batch's loss as Composer logs it: the mean over every rank and microbatch (``loss/train/total``).

    ``state.loss`` alone is only this rank's last microbatch (trainer.py ``_train_loop``, composer 0.32.1); it
    stands in before Composer has logged a total.
    """
    return as_float(batch_loss_value(state))


def batch_loss_value(state: State) -> torch.Tensor | float:
    """``batch_loss`` before it is read: Composer's total is a float already (trainer.py l. 2468, composer
    0.32.1); the stand-in is a tensor, or a dict of them summed as ``as_float`` sums them."""
    total = state.total_loss_dict.get("loss/train/total")
    if total is not None:
        return as_float(total)
    return state.loss if isinstance(state.loss, torch.Tensor) else as_float(state.loss)


def validation_metrics(state: State) -> dict[str, float]:
    """The current validation metrics as ``val/<name>`` floats (what train.py reports and evaluate.py prints)."""
    metrics = state.eval_metrics.get(VALIDATION_LABEL, {})
    return {f"{VALIDATION_LABEL}/{name}": as_float(metric.compute()) for name, metric in metrics.items()}


class StableMetricNames(ReadsStep, Callback):
    """Logs ``train/loss``, ``train/acc1``, ``lr`` each batch and ``val/acc1``, ``val/acc5``, ``val/loss`` per eval.

    The batch's numbers come from the step's shared reading (``callbacks.step_readings``): no host sync of its
    own.
    """

    def step_contribution(self, state: State) -> Contribution:
        values = {TRAIN_LOSS: batch_loss_value(state)}
        if "acc1" in state.train_metric_values:
            values[TRAIN_ACC1] = state.train_metric_values["acc1"]
        return Contribution(values=values)

    def batch_end(self, state: State, logger: Logger) -> None:
        reading = self.step_reading(state).values
        metrics = {TRAIN_LOSS: reading[TRAIN_LOSS], "lr": state.optimizers[0].param_groups[0]["lr"]}
        if TRAIN_ACC1 in reading:
            metrics[TRAIN_ACC1] = reading[TRAIN_ACC1]
        logger.log_metrics(metrics)

    def eval_end(self, state: State, logger: Logger) -> None:
        logger.log_metrics(validation_metrics(state))
