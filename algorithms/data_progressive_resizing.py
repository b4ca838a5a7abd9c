"""Progressive resizing done by the data loader, so small early epochs also cost the CPU less.

Composer's ProgressiveResizing shrinks each batch after the data loader (mosaicml/composer#728): the CPU still
decodes, crops and resizes full-size images while the GPU, at half the side length, asks for ~3x more of them per
second. This algorithm follows Composer's schedule (same arguments, same sizes pinned to ``size_increment``) but
sets the size the fast pipeline's RandomResizedCrop produces, once per epoch, so the crop is resized straight to
the small size and large crops are decoded at reduced JPEG scale. Recipes name it ``data_progressive_resizing``
in place of ``progressive_resizing``; it needs ``data.pipeline=fast``.

The size changes only at the start of training and of each epoch, when no worker is producing batches, so every
batch has one size; the size lives in shared memory, so persistent workers see it. Eval images keep ``data.eval_resolution``.
"""

from __future__ import annotations

from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from data.fast_transforms import SharedResolution, input_resolution
from recipes.errors import UsageError


def scale_at(elapsed: float, initial_scale: float, delay_fraction: float, finetune_fraction: float) -> float:
    """Composer's ProgressiveResizing schedule: ``initial_scale`` until ``delay_fraction``, then linear to 1."""
    ramp = 1 - finetune_fraction - delay_fraction
    if elapsed < delay_fraction:
        progress = 0.0
    elif ramp <= 0:
        progress = 1.0
    else:
        progress = min((elapsed - delay_fraction) / ramp, 1.0)
    return initial_scale + (1 - initial_scale) * progress


def pinned_size(full: int, scale: float, increment: int) -> int:
    """``full * scale`` rounded to a multiple of ``increment`` as Composer pins sizes: Python's ``round``, so a
    tie goes to the even multiple (composer/algorithms/progressive_resizing/progressive_resizing.py:233, 0.32.1);
    at least one increment, where Composer's would reach 0 px."""
    return max(increment, round(full * scale / increment) * increment)


class DataProgressiveResizing(Algorithm):
    """Sets the training resolution of the fast data pipeline at each epoch start, on Composer's schedule.

    Args:
        initial_scale: side length at the start, as a fraction of ``data.train_resolution``.
        finetune_fraction: fraction of training at the end spent at full size.
        delay_fraction: fraction of training at the start spent at ``initial_scale``.
        size_increment: sizes are multiples of this number of pixels.
    """

    def __init__(
        self,
        initial_scale: float = 0.5,
        finetune_fraction: float = 0.2,
        delay_fraction: float = 0.5,
        size_increment: int = 4,
    ) -> None:
        if not 0 < initial_scale <= 1:
            raise ValueError(f"initial_scale must be in (0, 1], not {initial_scale}")
        if not (0 <= finetune_fraction <= 1 and 0 <= delay_fraction <= 1):
            raise ValueError("finetune_fraction and delay_fraction must be in [0, 1]")
        if delay_fraction + finetune_fraction > 1:
            raise ValueError(
                f"delay_fraction + finetune_fraction must be at most 1, not {delay_fraction + finetune_fraction}"
            )
        if size_increment < 1:
            raise ValueError(f"size_increment must be a positive number of pixels, not {size_increment}")
        self.initial_scale = initial_scale
        self.finetune_fraction = finetune_fraction
        self.delay_fraction = delay_fraction
        self.size_increment = size_increment
        self.full_resolution: int | None = None

    def match(self, event: Event, state: State) -> bool:
        # FIT_START too: a run resumed mid-epoch trains the rest of that epoch at the size scheduled for it.
        return event in (Event.FIT_START, Event.EPOCH_START)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        resolution = self._resolution(state)
        if self.full_resolution is None:
            self.full_resolution = resolution.get()
        elapsed = state.get_elapsed_duration()
        scale = scale_at(
            0.0 if elapsed is None else elapsed.value,
            self.initial_scale,
            self.delay_fraction,
            self.finetune_fraction,
        )
        size = min(self.full_resolution, pinned_size(self.full_resolution, scale, self.size_increment))
        resolution.set(size)
        logger.log_metrics({"data/train_resolution": size})

    @staticmethod
    def _resolution(state: State) -> SharedResolution:
        dataset = getattr(state.train_dataloader, "dataset", None)
        resolution = input_resolution(dataset)
        if resolution is None:
            raise UsageError(
                "algorithms.data_progressive_resizing needs data.pipeline=fast (its crop step takes the size); "
                "with data.pipeline=torchvision use algorithms.progressive_resizing instead."
            )
        return resolution
