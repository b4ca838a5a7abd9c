"""Composer's MixUp or Composer's CutMix, one of the two per batch, as ResNet strikes back and torchvision's V2 mix.

Both references draw, for every batch, either MixUp or CutMix (timm's ``Mixup(mixup_alpha, cutmix_alpha,
switch_prob=0.5)``; torchvision's ``RandomChoice([RandomMixup, RandomCutmix])``), never both. Composer has the two
as separate algorithms, and a recipe that enables both gets both on every batch: a blend of images with a
rectangle pasted in. This algorithm holds one of each, with the recipe's alphas, and hands each batch to one of
them, drawn with probability ``switch_prob`` for CutMix from torch's global generator, which Composer seeds and
restores on resume as it does for the two algorithms' own draws. Each one then mixes the images before the
forward pass and the targets before the loss exactly as it does alone, so the loss (cross-entropy or either BCE)
sees soft targets either way.
"""

from __future__ import annotations

import torch
from composer.algorithms import CutMix, MixUp
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from recipes.errors import UsageError


class MixUpOrCutMix(Algorithm):
    """MixUp (``mixup_alpha``) or CutMix (``cutmix_alpha``) per batch, CutMix with probability ``switch_prob``."""

    def __init__(self, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0, switch_prob: float = 0.5) -> None:
        if mixup_alpha <= 0 or cutmix_alpha <= 0:
            raise UsageError(
                f"'algorithms.mixup_or_cutmix' needs positive alphas (mixup_alpha={mixup_alpha}, "
                f"cutmix_alpha={cutmix_alpha}); for one of the two alone use algorithms.mixup or algorithms.cutmix."
            )
        if not 0 < switch_prob < 1:
            raise UsageError(
                f"'algorithms.mixup_or_cutmix.switch_prob' is {switch_prob}; give the probability of CutMix "
                "strictly between 0 and 1 (0.5 in both references), or use algorithms.mixup or algorithms.cutmix."
            )
        self.mixup = MixUp(alpha=mixup_alpha)
        self.cutmix = CutMix(alpha=cutmix_alpha)
        self.switch_prob = switch_prob
        self.chosen: Algorithm = self.mixup

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.BEFORE_FORWARD, Event.BEFORE_LOSS)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.BEFORE_FORWARD:
            self.chosen = self.cutmix if torch.rand(()).item() < self.switch_prob else self.mixup
        self.chosen.apply(event, state, logger)
