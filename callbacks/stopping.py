"""Stopping a run early, as the preemption handler and the training doctor both do.

``State.stop_training`` ends ``fit`` after the current batch, but Composer would still run the evaluation that
the end of training schedules (minutes on ImageNet, out of a two-minute spot notice) and, unless told otherwise,
save the stopping state as the run's final checkpoint.
"""

from __future__ import annotations

from composer.callbacks import CheckpointSaver
from composer.core import Event, State


def never(state: State, event: Event) -> bool:
    """A save or eval interval that never fires."""
    return False


def stop_early(state: State, *, save_checkpoint: bool) -> None:
    """Stop after this batch without evaluating; with ``save_checkpoint`` false, without saving either."""
    state.stop_training()
    for evaluator in state.evaluators:
        evaluator.eval_interval = never
    if not save_checkpoint:
        for callback in state.callbacks:
            if isinstance(callback, CheckpointSaver):
                callback.save_interval = never
