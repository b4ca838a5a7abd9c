"""Progress as plain lines, for a console that is not a terminal (a log file, a pipe, a batch system's output).

Composer's progress bar redraws itself with carriage returns and cursor moves; in a file each redraw stays, and
an epoch becomes dozens of ``\\r``-joined copies of the bar. Where the console is not a terminal the run prints
one line per progress step instead: about ``LINES_PER_EPOCH`` a training epoch, its last batch always, and one
per evaluation.
"""

from __future__ import annotations

import sys

from composer.core import Callback, State
from composer.loggers import Logger

from callbacks.metric_names import batch_loss, validation_metrics
from callbacks.ranks import say

LINES_PER_EPOCH = 10


def console_is_terminal() -> bool:
    """Whether both console streams are terminals: Composer draws its bar on stderr and the run prints its
    header and summary on stdout, so a bar is only drawn when neither lands in a file."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class ProgressLines(Callback):
    """One line per progress step: ``train epoch 1 batch 3/4 step 3 loss 2.2194``, and ``val epoch 1 step 4
    acc1 0.1250 ...`` after each evaluation (from global rank 0)."""

    def __init__(self, lines_per_epoch: int = LINES_PER_EPOCH) -> None:
        self.lines_per_epoch = lines_per_epoch

    def batch_end(self, state: State, logger: Logger) -> None:
        length = int(state.dataloader_len) if state.dataloader_len is not None else None
        in_epoch = int(state.timestamp.batch_in_epoch)
        every = max(1, (length or 0) // self.lines_per_epoch)
        if in_epoch % every and in_epoch != length:
            return
        of_length = f"/{length}" if length is not None else ""
        say(
            f"train epoch {int(state.timestamp.epoch) + 1} batch {in_epoch}{of_length} "
            f"step {int(state.timestamp.batch)} loss {batch_loss(state):.4f}"
        )

    def eval_end(self, state: State, logger: Logger) -> None:
        metrics = " ".join(
            f"{name.split('/', 1)[1]} {value:.4f}" for name, value in validation_metrics(state).items()
        )
        # An evaluation at an epoch's end runs once Composer has counted that epoch (batch_in_epoch back at 0).
        epoch = int(state.timestamp.epoch) + (0 if int(state.timestamp.batch_in_epoch) == 0 else 1)
        say(f"val epoch {epoch} step {int(state.timestamp.batch)} {metrics}".rstrip())
