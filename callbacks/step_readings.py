"""The numbers the callbacks read at each training step, gathered in one device-to-host copy and, under DDP, one
small all-reduce.

Three callbacks need numbers from the device or from the other ranks at every step: ``StableMetricNames`` the
training accuracy, the ``TrainingDoctor`` the gradient norm and whether any rank's loss or gradient is
non-finite, ``Preemption`` whether any rank was signalled. Read one by one, each ``.item()`` makes the host wait
for the GPU to finish the step, and each ``any_rank`` is an all-reduce of its own: five syncs and two
collectives per step. Each of these callbacks is a ``ReadsStep``: the first of them to ask at a step collects
what every ``ReadsStep`` in the Trainer contributes (values: device scalars or host numbers; flags: device or
host booleans), stacks the device part into one float32 tensor, all-reduces its flags with MAX, copies it to
the host once, and hands the same ``StepReading`` to all of them. Host numbers pass through untouched (Composer's
``loss/train/total`` is already a Python float), and a device scalar becomes the float ``.item()`` would give.

A flag is agreed, true on every rank if it is true on any, so decisions that stop training are taken alike on
every rank. The reading belongs to one ``state.timestamp`` (Composer makes a new one per batch and at each epoch
end), so a callback asking again later in the same batch gets the same reading and one asking after the epoch
ends reads afresh. A callback used alone (no other ``ReadsStep`` in ``state.callbacks``) reads its own
contribution the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from composer.utils import dist


@dataclass(frozen=True)
class Contribution:
    """What one callback needs read at this step."""

    # Device scalars (read to the host) or host numbers (passed through); None when there is nothing to read.
    values: dict[str, torch.Tensor | float | None] = field(default_factory=dict)
    # Device or host booleans, agreed over the ranks (true everywhere if true on any).
    flags: dict[str, torch.Tensor | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class StepReading:
    """One step's numbers on the host: ``values`` as floats (or None), ``flags`` agreed over the ranks."""

    timestamp: Any
    values: dict[str, float | None]
    flags: dict[str, bool]


def read_step(state: Any, contributions: list[Contribution]) -> StepReading:
    """Every contribution read at once: one stacked tensor, one MAX all-reduce of its flags when there are several
    processes, one copy to the host."""
    values: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    for contribution in contributions:
        values.update(contribution.values)
        flags.update(contribution.flags)
    on_device = [name for name, value in values.items() if isinstance(value, torch.Tensor)]
    host_values = {
        name: None if v is None else float(v) for name, v in values.items() if name not in on_device
    }
    # Each device value as ``as_float`` reads it: float32, the mean of its elements.
    parts = [values[name].detach().float().mean() for name in on_device]
    tensors = [value for value in [*values.values(), *flags.values()] if isinstance(value, torch.Tensor)]
    shared = dist.get_world_size() > 1 and bool(flags)
    if not tensors and not shared:  # nothing on the device, nobody to agree with: no sync at all
        return StepReading(state.timestamp, host_values, {name: bool(flag) for name, flag in flags.items()})
    device = tensors[0].device if tensors else torch.device("cpu")
    # torch.full writes a host boolean on the device without a host-to-device copy (which could wait for the GPU).
    parts += [
        flag.detach().float().reshape(()).to(device)
        if isinstance(flag, torch.Tensor)
        else torch.full((), float(flag), device=device)
        for flag in flags.values()
    ]
    stacked = torch.stack(parts)
    if shared:
        stacked = state.device.tensor_to_device(stacked)
        dist.all_reduce(stacked[len(on_device) :], reduce_operation="MAX")
    read = stacked.tolist()  # the one host sync
    return StepReading(
        state.timestamp,
        {**host_values, **dict(zip(on_device, read[: len(on_device)], strict=True))},
        {name: value > 0 for name, value in zip(flags, read[len(on_device) :], strict=True)},
    )


class ReadsStep:
    """A callback that reads numbers at each step: it says what with ``step_contribution`` and gets them (with
    everyone else's, read together) from ``step_reading``."""

    _step_reading: StepReading | None = None

    def step_contribution(self, state: Any) -> Contribution:
        """What this callback needs read now."""
        raise NotImplementedError

    def step_reading(self, state: Any) -> StepReading:
        """This step's reading, shared by every ``ReadsStep`` of the Trainer; read now if nobody has yet."""
        cached = self._step_reading
        if cached is not None and cached.timestamp is state.timestamp:
            return cached
        readers = [
            callback for callback in getattr(state, "callbacks", ()) if isinstance(callback, ReadsStep)
        ]
        if self not in readers:
            readers.append(self)
        reading = read_step(state, [reader.step_contribution(state) for reader in readers])
        for reader in readers:
            reader._step_reading = reading
        return reading
