"""The two rules every process of a run follows: only global rank 0 speaks to people, and a decision that stops
training is taken alike on every rank (or the ranks would wait on each other's collectives forever)."""

from __future__ import annotations

import torch
from composer.core import State
from composer.utils import dist


def say(message: str) -> None:
    """Print ``message`` once, from global rank 0, at once (not buffered behind a progress bar)."""
    if dist.get_global_rank() == 0:
        print(message, flush=True)


def any_rank(state: State, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (one tiny all-reduce under DDP, none for one process)."""
    if dist.get_world_size() == 1:
        return flag
    tensor = state.device.tensor_to_device(torch.tensor([int(flag)], dtype=torch.uint8))
    dist.all_reduce(tensor, reduce_operation="MAX")
    return bool(tensor.item())
