"""The profiler section: torch traces for the active window only, and a step-time breakdown that puts planted
delays in the phase they were planted in; under ``composer -n 2`` both ranks' traces and the all-reduce time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from composer import Trainer
from composer.models import ComposerClassifier
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from callbacks.step_breakdown import BREAKDOWN_FILE, covered_seconds
from recipes.schema import ProfilerConfig
from tests.test_ddp import Run
from training.profiling import build_profiler

DATA_DELAY_S = 0.06
OPTIMIZER_DELAY_S = 0.04


def test_overlapping_all_reduces_count_once() -> None:
    assert covered_seconds([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0), (3.2, 3.5)]) == 3.0
    assert covered_seconds([]) == 0.0


class SlowStepSGD(torch.optim.SGD):
    """SGD whose step takes OPTIMIZER_DELAY_S longer (a planted slow optimizer)."""

    def step(self, closure=None):
        time.sleep(OPTIMIZER_DELAY_S)
        return super().step(closure)


def slow_collate(samples: list) -> list[torch.Tensor]:
    """The default collate plus DATA_DELAY_S (a planted slow loader)."""
    time.sleep(DATA_DELAY_S)
    return [torch.stack([sample[0] for sample in samples]), torch.stack([sample[1] for sample in samples])]


def test_planted_delays_land_in_their_phase_and_only_the_window_is_traced(tmp_path: Path) -> None:
    # A plain SGD made first, as other tests in the session do: torch then wraps SGD.step with the step hooks
    # too, so SlowStepSGD's hooks fire twice, nested (the breakdown must count the outer call).
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    images, labels = torch.randn(48, 3, 8, 8), torch.arange(48) % 4
    loader = DataLoader(TensorDataset(images, labels), batch_size=4, collate_fn=slow_collate)  # 12 batches
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    model = ComposerClassifier(network, num_classes=4)
    settings = OmegaConf.merge(
        OmegaConf.structured(ProfilerConfig), {"enabled": True, "skip_first": 2, "warmup": 1, "active": 3}
    )
    profiler, callbacks = build_profiler(settings, tmp_path)
    trainer = Trainer(
        model=model, train_dataloader=loader, optimizers=SlowStepSGD(model.parameters(), lr=0.01),
        max_duration="2ep", device="cpu", profiler=profiler, callbacks=callbacks, progress_bar=False,
    )  # fmt: skip
    trainer.fit()
    trainer.close()

    (rank,) = json.loads((tmp_path / "profiler" / BREAKDOWN_FILE).read_text())["ranks"]
    assert rank["steps"] == 3  # the active batches of the first epoch only (profiler.epochs=1)
    assert rank["data_wait_ms"] >= 1000 * DATA_DELAY_S and rank["optimizer_ms"] >= 1000 * OPTIMIZER_DELAY_S
    assert max(rank["share"], key=rank["share"].get) == "data_wait"
    assert rank["forward_ms"] < 1000 * OPTIMIZER_DELAY_S and rank["all_reduce_ms"] is None  # one process
    phases = ("data_wait", "forward", "backward", "optimizer", "other")
    assert abs(sum(rank[f"{phase}_ms"] for phase in phases) - rank["step_ms"]) < 0.1
    (trace,) = (tmp_path / "profiler" / "torch").glob("rank0.*.pt.trace.json")  # one cycle, one epoch
    steps = [
        e
        for e in json.loads(trace.read_text())["traceEvents"]
        if e.get("name", "").startswith("ProfilerStep")
    ]
    assert len(steps) == 3 and all(step["dur"] >= 1e6 * OPTIMIZER_DELAY_S for step in steps)  # microseconds


def test_two_ranks_write_their_traces_and_the_all_reduce_time(two_processes: Run) -> None:
    """The profiled two-rank DDP run (tests/conftest.py's two_processes, three profiled steps of four)."""
    folder = two_processes.folder
    ranks = json.loads((folder / "profiler" / BREAKDOWN_FILE).read_text())["ranks"]
    assert [rank["steps"] for rank in ranks] == [3, 3]
    for rank in ranks:  # DDP's gradient buckets went through the timed hook on both ranks
        assert rank["all_reduce_ms"] > 0 and rank["all_reduce_buckets_per_step"] >= 1
        assert rank["backward_ms"] > 0 and rank["forward_ms"] > 0
    assert (
        "all-reduce in flight per step" in two_processes.stdout_by_rank[0]
        and "rank 1" in two_processes.stdout_by_rank[0]
    )
    for rank in (0, 1):
        (trace,) = (folder / "profiler" / "torch").glob(f"rank{rank}.*.pt.trace.json")
        names = [event.get("name", "") for event in json.loads(trace.read_text())["traceEvents"]]
        assert sum(name.startswith("ProfilerStep") for name in names) == 3
    merged = json.loads((folder / "profiler" / "composer" / "merged_trace.json").read_text())
    events = merged["traceEvents"] if isinstance(merged, dict) else merged
    assert {event.get("pid") for event in events if event.get("name") == "event/forward"} >= {0, 1}
