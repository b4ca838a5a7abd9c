"""When the validation set was last evaluated, so the run evaluates its final weights once, not twice.

Composer evaluates at each ``eval_interval`` and also at the end of training (``create_interval_scheduler(...,
include_end_of_training=True)``, composer/utils/misc.py, 0.32.1). Only when no evaluation saw the final weights (an
interval that never fires, or one Composer was told to skip) does the run need its own ``trainer.eval()``.
"""

from __future__ import annotations

from composer.core import Callback, State
from composer.loggers import Logger

from callbacks.metric_names import VALIDATION_LABEL


class LastEvaluation(Callback):
    """Records the optimizer step at which the validation evaluation last finished (None before the first)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def eval_end(self, state: State, logger: Logger) -> None:
        if state.dataloader_label == VALIDATION_LABEL:
            self.step = int(state.timestamp.batch)

    def saw_final_weights(self, state: State) -> bool:
        """Whether the last evaluation ran on the weights training ended with."""
        return self.step == int(state.timestamp.batch)
