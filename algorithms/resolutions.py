"""The image side each step of a run trains at, under the resizing algorithms: one schedule for the planner's
time estimate (``tools.estimates``) and the budget guard's projection (``callbacks.budget_guard``), whose later
steps cost more under progressive resizing."""

from __future__ import annotations

from omegaconf import DictConfig

from algorithms.data_progressive_resizing import pinned_size, scale_at
from algorithms.registry import enabled_algorithms


def resolution_schedule(config: DictConfig, batches: int, total: int) -> list[tuple[int, int, int]]:
    """The run in segments of at most one epoch: (steps, side the network sees, side the loader produces).

    ``data_progressive_resizing`` sets the loader's size at each epoch start; Composer's
    ``progressive_resizing`` shrinks each batch after a full-size load (taken at the middle of the segment).
    """
    enabled = enabled_algorithms(config.algorithms)
    full = config.data.train_resolution
    segments = []
    for start in range(0, total, batches):
        steps = min(batches, total - start)
        network_side = loader_side = full
        for name in ("data_progressive_resizing", "progressive_resizing"):
            if name not in enabled:
                continue
            arguments = enabled[name]
            elapsed = start if name == "data_progressive_resizing" else start + steps / 2
            scale = scale_at(
                elapsed / total,
                arguments.get("initial_scale", 0.5),
                arguments.get("delay_fraction", 0.5),
                arguments.get("finetune_fraction", 0.2),
            )
            increment = arguments.get("size_increment", 4)
            if name == "data_progressive_resizing":
                network_side = loader_side = min(full, pinned_size(full, scale, increment))
            else:
                network_side = max(increment, round(full * scale / increment) * increment)
        segments.append((steps, network_side, loader_side))
    return segments
