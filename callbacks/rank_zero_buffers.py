"""Under DDP, the reported validation metrics are those of rank 0's (checkpointed) weights and statistics."""

from __future__ import annotations

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist


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
