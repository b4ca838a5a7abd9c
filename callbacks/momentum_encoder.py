"""MoCo v3's momentum encoder, stepped by the Trainer: its momentum on the official half-cosine, the update once
per optimizer step before the keys are computed, and the queue of negatives filled once per step."""

from __future__ import annotations

import math

from composer.core import Callback, State
from composer.loggers import Logger

from model import MocoV3
from recipes.durations import steps_in


def cosine_momentum(start: float, step: int, total_steps: int) -> float:
    """The momentum at ``step`` of ``total_steps``: ``start`` at step 0 raised to 1 at the end by a half-cycle
    cosine, ``1 - (1 + cos(pi * step / total)) / 2 * (1 - start)`` (facebookresearch/moco-v3@c349e6e
    main_moco.py:431-434, fed ``epoch + i / iters_per_epoch`` over ``epochs`` at lines 341-345: the fraction of
    the run's steps done)."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / total_steps)) * (1.0 - start)


class MomentumEncoder(Callback):
    """Sets the momentum from the step and updates the momentum encoder, then fills the queue, every step.

    The official loop sets ``m`` from the iteration and updates the momentum encoder inside the forward, before
    the keys (main_moco.py:341-353, moco/builder.py:89-94). Here that happens at ``Event.BATCH_START``: once per
    optimizer step, after the batch is loaded and before the first microbatch's forward (composer 0.32.1
    trainer/trainer.py:2444-2459; ``AFTER_DATALOADER`` is where algorithms still rewrite the batch). The step is
    ``state.timestamp.batch``, the steps done (0 at the first), of ``max_duration`` in steps, so the schedule
    resumes exactly from a checkpoint; the momentum encoder and queue are in the checkpoint as module state.

    The keys a step's forwards keep are discarded at ``BEFORE_TRAIN_BATCH`` (each attempt at the step begins
    there, a retry after an out-of-memory error included, trainer.py:2817) and enqueued at ``BATCH_END``, after
    the optimizer step, so every microbatch of a step sees the queue as it was when the step began.
    """

    def __init__(self, momentum: float, global_batch_size: int) -> None:
        self.momentum = momentum
        self.global_batch_size = global_batch_size

    @staticmethod
    def moco_model(state: State) -> MocoV3:
        """The MocoV3 inside ``state.model`` (the DDP wrapper's ``.module`` under DDP, as Composer's own
        callbacks unwrap it, composer/callbacks/generate.py:65)."""
        model = state.model.module if state.is_model_ddp else state.model
        if not isinstance(model, MocoV3):
            raise TypeError(f"MomentumEncoder needs a MocoV3 model, not {type(model).__name__}.")
        return model

    def batch_start(self, state: State, logger: Logger) -> None:
        total_steps = steps_in(
            state.max_duration,
            "max_duration",
            batches_per_epoch=int(state.dataloader_len or 0),
            global_batch_size=self.global_batch_size,
        )
        momentum = cosine_momentum(self.momentum, int(state.timestamp.batch), total_steps)
        self.moco_model(state).update_momentum_encoder(momentum)
        logger.log_metrics({"moco/momentum": momentum})

    def before_train_batch(self, state: State, logger: Logger) -> None:
        self.moco_model(state).discard_step_keys()

    def batch_end(self, state: State, logger: Logger) -> None:
        self.moco_model(state).enqueue_step_keys()
