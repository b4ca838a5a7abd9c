"""The step's shared reading (callbacks.step_readings): what the callbacks read per training step costs at most one
host sync and, under DDP, one all-reduce, and reads the same numbers they read one by one before."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from composer.core import Engine, Event
from composer.devices import DeviceCPU
from composer.utils import dist as composer_dist

import callbacks.preemption
import callbacks.ranks
import callbacks.step_readings
from callbacks.step_readings import Contribution, ReadsStep, read_step
from training.preflight import load_run_recipe
from training.trainer import build_training

CALLBACKS = str(Path(callbacks.step_readings.__file__).parent)
# What makes the host wait for the device: reading a value or copying a tensor to the host.
HOST_SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
# Composer's events of one training step (the evaluation that BATCH_END may start runs EVAL_* events).
STEP_EVENTS = {
    Event.AFTER_DATALOADER, Event.BATCH_START, Event.BEFORE_TRAIN_BATCH, Event.BEFORE_FORWARD, Event.AFTER_FORWARD,
    Event.BEFORE_LOSS, Event.AFTER_LOSS, Event.BEFORE_BACKWARD, Event.AFTER_BACKWARD, Event.AFTER_TRAIN_BATCH,
    Event.BATCH_END, Event.BATCH_CHECKPOINT,
}  # fmt: skip


class TwoRanks:
    """``composer.utils.dist`` as the callbacks see it with a second rank that agrees: all-reduces are counted (a
    MAX with an equal tensor changes nothing); everything else is the real module."""

    def __init__(self) -> None:
        self.all_reduces: list[tuple[str, int]] = []
        self.where: tuple[str, int] = ("", 0)

    def get_world_size(self) -> int:
        return 2

    def all_reduce(self, tensor: torch.Tensor, reduce_operation: str = "SUM") -> None:
        self.all_reduces.append(self.where)

    def __getattr__(self, name: str) -> Any:
        return getattr(composer_dist, name)


def from_callbacks() -> bool:
    """Whether the caller's stack passes through this project's callbacks."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(CALLBACKS):
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TwoRanks, list[tuple[str, int]]]]:
    """Host syncs and all-reduces made from the callbacks, each with the Composer event and batch it ran in;
    the callbacks see two processes."""
    world = TwoRanks()
    syncs: list[tuple[str, int]] = []
    for module in (callbacks.step_readings, callbacks.preemption, callbacks.ranks):
        monkeypatch.setattr(module, "dist", world)
    for name in HOST_SYNCS:
        method = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _method: Any = method, **kwargs: Any) -> Any:
            if from_callbacks():
                syncs.append(world.where)
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    run_event = Engine.run_event

    def noting_the_event(self: Engine, event: Event | str) -> None:
        previous, world.where = world.where, (str(Event(event)), int(self.state.timestamp.batch))
        run_event(self, event)
        world.where = previous

    monkeypatch.setattr(Engine, "run_event", noting_the_event)
    yield world, syncs


def test_the_whole_stack_syncs_once_and_all_reduces_once_per_step(
    tmp_path: Path, counted: tuple[TwoRanks, list[tuple[str, int]]]
) -> None:
    """train.py's Trainer (metric names, doctor, preemption, metrics file, checkpoints) on a CPU: per step, the
    callbacks' numbers cost one host copy and one small all-reduce of the stop flags, together."""
    config = load_run_recipe(
        "smoke",
        [
            "model.name=resnet18", "data.source=synthetic", "data.num_classes=4", "data.synthetic_train_samples=12",
            "data.synthetic_val_samples=4", "data.train_resolution=16", "data.eval_resolution=16",
            "data.num_workers=0", "global_batch_size=4", "max_duration=2ep", "eval_interval=1ep",
            "save_interval=1ep", f"save_folder={tmp_path}", "logging.progress_bar=false",
            "logging.metrics_every_n_batches=1",
        ],
    )  # fmt: skip
    run = build_training(config, Path("smoke.yaml"))
    world, syncs = counted
    run.trainer.fit()
    steps = range(1, 7)
    per_step = Counter(batch for event, batch in syncs if event in map(str, STEP_EVENTS))
    all_reduces = Counter(batch for event, batch in world.all_reduces if event in map(str, STEP_EVENTS))
    assert {step: per_step[step] for step in steps} == dict.fromkeys(steps, 1)
    assert {step: all_reduces[step] for step in steps} == dict.fromkeys(steps, 1)
    # Once per epoch, Preemption reads its flag afresh after the epoch's evaluation.
    assert Counter(event for event, _ in world.all_reduces if event not in map(str, STEP_EVENTS)) == {
        str(Event.EPOCH_CHECKPOINT): 2
    }
    lines = run.metrics_file.latest
    assert {"train/loss", "train/acc1", "train/grad_norm", "lr", "val/acc1"} <= set(lines)
    run.trainer.close()


# ---- the reading itself ----


class Reader(ReadsStep):
    """A callback that needs ``values`` and ``flags`` read; counts how often it is asked."""

    def __init__(self, values: dict[str, Any], flags: dict[str, Any] | None = None) -> None:
        self.values, self.flags, self.asked = values, flags or {}, 0

    def step_contribution(self, state: Any) -> Contribution:
        self.asked += 1
        return Contribution(values=self.values, flags=self.flags)


def fake_state(*readers: Reader) -> SimpleNamespace:
    return SimpleNamespace(callbacks=list(readers), timestamp=object(), device=DeviceCPU())


def test_values_read_as_item_would_and_host_numbers_pass_untouched() -> None:
    # Composer's float64 total over 3 ranks: a float32 round trip would change it.
    loss = 2.241579055786133 / 3
    accuracy = torch.tensor(0.1875)
    reading = read_step(fake_state(), [Contribution(values={"loss": loss, "acc": accuracy, "none": None})])
    assert reading.values == {"loss": loss, "acc": accuracy.item(), "none": None}
    assert type(reading.values["acc"]) is float


def test_every_reader_of_a_step_shares_one_reading_and_a_new_timestamp_reads_again() -> None:
    first, second = Reader({"a": torch.tensor(1.0)}), Reader({"b": torch.tensor(2.0)})
    state = fake_state(first, second)
    reading = second.step_reading(state)
    assert first.step_reading(state) is reading and reading.values == {"a": 1.0, "b": 2.0}
    assert (first.asked, second.asked) == (1, 1)
    state.timestamp = object()  # the next batch
    assert first.step_reading(state) is not reading and (first.asked, second.asked) == (2, 2)


def test_flags_are_agreed_over_the_ranks_in_one_all_reduce_that_leaves_the_values_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = TwoRanks()
    reduced: list[torch.Tensor] = []

    def another_rank_raised_its_flags(tensor: torch.Tensor, reduce_operation: str = "SUM") -> None:
        assert reduce_operation == "MAX"
        reduced.append(tensor)
        tensor.fill_(1)

    world.all_reduce = another_rank_raised_its_flags
    monkeypatch.setattr(callbacks.step_readings, "dist", world)
    reader = Reader({"norm": torch.tensor(5.0)}, {"stop": False, "nan": torch.tensor(False)})
    reading = reader.step_reading(fake_state(reader))
    assert len(reduced) == 1 and reduced[0].numel() == 2  # the two flags, not the value
    assert reading.flags == {"stop": True, "nan": True} and reading.values == {"norm": 5.0}


def test_one_process_without_device_values_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[torch.Tensor] = []
    monkeypatch.setattr(torch.Tensor, "tolist", lambda tensor: copies.append(tensor) or [])
    reading = read_step(fake_state(), [Contribution(values={"loss": 1.5}, flags={"stop": True})])
    assert reading.flags == {"stop": True} and reading.values == {"loss": 1.5} and copies == []


def test_device_flags_alone_are_read_in_the_one_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[torch.Tensor] = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda tensor: copies.append(tensor) or tolist(tensor))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda tensor: pytest.fail("a flag was read on its own"))
    flags = {"nan": torch.tensor(True), "inf": torch.tensor(False)}
    reading = read_step(fake_state(), [Contribution(values={"loss": 1.5}, flags=flags)])
    assert reading.flags == {"nan": True, "inf": False} and len(copies) == 1
