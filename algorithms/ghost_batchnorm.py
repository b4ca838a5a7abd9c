"""Composer's GhostBatchNorm, except that evaluation normalises a batch of any size.

Composer's ghost layers (``composer/algorithms/ghost_batchnorm/ghost_batchnorm.py``, ``_GhostBatchNorm.forward``)
refuse any batch smaller than ``ghost_batch_size``, in eval mode too, where chunking changes nothing (each chunk is
normalised with the running statistics). The validation set's last batch is usually smaller, so the first
evaluation of a run would fail; here an eval-mode layer calls its BatchNorm directly. Training is Composer's:
each ghost batch is normalised with its own statistics and the momentum is divided among the chunks. The layers
keep Composer's structure (``bn1.batchnorm.weight``), which ``training.weights`` maps back to plain BatchNorm.
"""

from __future__ import annotations

from composer.algorithms import GhostBatchNorm as ComposerGhostBatchNorm
from composer.algorithms.ghost_batchnorm.ghost_batchnorm import GhostBatchNorm2d
from composer.core import Event, State
from composer.loggers import Logger
from composer.utils import module_surgery
from torch import Tensor, nn


class EvalSafeGhostBatchNorm2d(GhostBatchNorm2d):
    """Composer's GhostBatchNorm2d in training; plain BatchNorm with its running statistics in eval mode."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return self.batchnorm(input)
        return super().forward(input)


class GhostBatchNorm(ComposerGhostBatchNorm):
    """Composer's GhostBatchNorm (same arguments, same event), with ``EvalSafeGhostBatchNorm2d`` layers."""

    def apply(self, event: Event, state: State, logger: Logger | None = None) -> None:
        def replace(module: nn.Module, module_index: int) -> nn.Module | None:
            if getattr(module, "_already_ghost_batchnormed", False):
                return None
            return EvalSafeGhostBatchNorm2d(module, ghost_batch_size=self.ghost_batch_size)

        module_surgery.replace_module_classes(
            state.model, optimizers=state.optimizers, policies={nn.BatchNorm2d: replace}
        )
        self._log_results(event, state, logger)
