"""The budget guard: its projection against what a run then really takes, the warning, the stop before the limit and
its resume, a budget spent before the start, an unknown price, and the spot price read from AWS (moto on loopback).

The unit tests drive the callback with a fake clock and fake Composer state: each simulated step moves the clock by
the step's time, each epoch's evaluation and checkpoint by the overhead's.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from callbacks import budget_guard
from callbacks.budget_guard import (
    BUDGET_STOPPED_EXIT_STATUS,
    SPEND_FILE,
    BudgetGuard,
    OverBudget,
    Price,
    raise_if_over_budget,
)
from callbacks.findings import read_findings
from recipes.errors import UsageError
from training.budget import build_budget_guard, recipe_price
from training.hardware import INSTANCES, parse_hardware
from training.preflight import load_run_recipe

BATCHES = 10


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTimestamp:
    def __init__(self) -> None:
        self.batch = 0
        self.epoch = 0


class FakeState:
    """What the guard reads of Composer's State, and what stopping touches."""

    def __init__(self) -> None:
        self.timestamp = FakeTimestamp()
        self.batch: Any = None
        self.stopped = False
        self.evaluators: list[Any] = []
        self.callbacks: list[Any] = []

    def stop_training(self) -> None:
        self.stopped = True


class RecordingLogger:
    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.append(metrics)


def guard_for(
    folder: Path,
    clock: FakeClock,
    *,
    usd_per_hour: float | None = 3.6,
    segments: list[tuple[int, int]] | None = None,
    **limits: Any,
) -> BudgetGuard:
    """A guard over three epochs of ``BATCHES`` steps at 32 px (unless ``segments`` says otherwise)."""
    return BudgetGuard(
        Price(usd_per_hour, "test price" if usd_per_hour is not None else "no price for hardware 'cpu'"),
        segments or [(BATCHES, 32)] * 3,
        BATCHES,
        folder,
        str(folder),
        clock=clock,
        **limits,
    )


def run_epoch(
    guard: BudgetGuard,
    state: FakeState,
    clock: FakeClock,
    logger: RecordingLogger,
    step_seconds: list[float] | float,
    overhead: float,
    side: int = 32,
) -> None:
    """One epoch of ``BATCHES`` steps at ``side``, then ``overhead`` seconds of evaluation and checkpoint."""
    seconds = step_seconds if isinstance(step_seconds, list) else [step_seconds] * BATCHES
    for duration in seconds:
        guard.before_dataloader(state, logger)
        clock.now += duration
        state.batch = (torch.zeros(1, 3, side, side), torch.zeros(1))
        state.timestamp.batch += 1
        guard.batch_end(state, logger)
    clock.now += overhead
    state.timestamp.epoch += 1
    guard.epoch_checkpoint(state, logger)


def started(guard: BudgetGuard, state: FakeState | None = None) -> tuple[FakeState, RecordingLogger]:
    state = state or FakeState()
    guard.fit_start(state, RecordingLogger())
    return state, RecordingLogger()


# ---- the projection ----


def test_the_projection_after_one_epoch_is_what_the_rest_of_the_run_then_takes_and_costs(
    tmp_path: Path,
) -> None:
    """10 s steps and 50 s of evaluation and checkpoint an epoch, at $3.60/h: after epoch 1 of 3 it projects the
    300 s the two epochs left then take, and the $0.45 the whole run then costs."""
    clock = FakeClock()
    guard = guard_for(tmp_path, clock)
    state, logger = started(guard)
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    projection = guard.last
    assert projection is not None
    at_epoch_one = clock.now
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    assert projection.hours_left * 3600 == pytest.approx(clock.now - at_epoch_one)
    assert projection.projected_usd == pytest.approx(clock.now / 3600 * 3.6)
    assert logger.metrics[0]["budget/projected_usd"] == pytest.approx(0.45)


def test_the_warmup_steps_are_left_out_of_the_pace(tmp_path: Path) -> None:
    """Three 40 s steps (cuDNN autotuning, a loader's first batches) then 10 s ones: the pace is 10 s."""
    clock = FakeClock()
    guard = guard_for(tmp_path, clock)
    state, logger = started(guard)
    run_epoch(guard, state, clock, logger, [40.0] * 3 + [10.0] * 7, 0.0)
    assert guard.last is not None and guard.last.seconds_per_step == 10.0


def test_a_larger_side_under_progressive_resizing_is_priced_by_pixels_then_remeasured(tmp_path: Path) -> None:
    """Epoch 1 at 16 px (10 s steps), epochs 2 and 3 at 32 px: projected at 4x the pixels (40 s steps) until
    epoch 2 measures them at 30 s, after which epoch 3 is projected at 30 s."""
    clock = FakeClock()
    guard = guard_for(tmp_path, clock, segments=[(BATCHES, 16), (BATCHES, 32), (BATCHES, 32)])
    state, logger = started(guard)
    run_epoch(guard, state, clock, logger, 10.0, 0.0, side=16)
    assert guard.last is not None and guard.last.hours_left * 3600 == pytest.approx(2 * BATCHES * 40.0)
    run_epoch(guard, state, clock, logger, 30.0, 0.0, side=32)
    assert guard.last.hours_left * 3600 == pytest.approx(BATCHES * 30.0)


def test_the_line_says_epoch_time_left_spend_and_projection_against_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    guard = guard_for(tmp_path, clock, usd_per_hour=36.0, max_usd=10.0)
    state, logger = started(guard)
    run_epoch(guard, state, clock, logger, 30.0, 60.0)
    assert "budget: epoch 1/3 · 12.0 min left · $3.60 so far · projected $10.80 of a $10.00 budget" in (
        capsys.readouterr().out
    )


# ---- limits ----


def test_a_projection_over_the_budget_is_one_warning(tmp_path: Path) -> None:
    """Five $0.15 epochs ($0.75) against $0.70: projected over from epoch 1, one warning over three epochs."""
    clock = FakeClock()
    guard = guard_for(tmp_path, clock, usd_per_hour=3.6, max_usd=0.70, segments=[(BATCHES, 32)] * 5)
    state, logger = started(guard)
    for _ in range(3):
        run_epoch(guard, state, clock, logger, 10.0, 50.0)
    findings = read_findings(tmp_path)
    assert [finding.code for finding in findings] == ["budget_projected_over"]
    assert "budget.max_usd" in findings[0].message and not state.stopped


def test_the_run_stops_at_the_last_epoch_end_before_the_spend_would_pass_the_limit(tmp_path: Path) -> None:
    """$0.15 an epoch against $0.40: epoch 2 ends at $0.30, and the third would end at $0.45, so it stops there
    with the spend under the limit, names budget.max_usd with a raised value, and exits 5."""
    clock = FakeClock()
    guard = guard_for(tmp_path, clock, usd_per_hour=3.6, max_usd=0.40)
    state, logger = started(guard)
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    assert not state.stopped
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    assert state.stopped and state.timestamp.epoch == 2
    assert json.loads((tmp_path / SPEND_FILE).read_text())["usd"] == pytest.approx(0.30)
    with pytest.raises(OverBudget, match=r"budget\.max_usd=0\.5 .*exit status 5"):
        raise_if_over_budget([guard])


def test_the_hours_limit_stops_a_run_without_a_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No price (a CPU): the time is still projected, the cost said to be unknown, and max_hours still stops."""
    clock = FakeClock()
    guard = guard_for(tmp_path, clock, usd_per_hour=None, max_hours=0.1)  # 6 min; an epoch takes 2.5
    state, logger = started(guard)
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    out = capsys.readouterr().out
    assert "budget: epoch 1/3 · 5.0 min left · 2.5 min so far · projected 7.5 min of a 0.1 h limit" in out
    assert "cost unknown (no price for hardware 'cpu')" in out
    assert state.stopped and "budget/projected_usd" not in logger.metrics[0]


def test_a_cpu_recipe_with_no_budget_has_no_guard_and_a_dollar_limit_needs_a_price(tmp_path: Path) -> None:
    config = load_run_recipe("smoke", [])
    assert build_budget_guard(config, tmp_path, str(tmp_path), 10) == []
    config = load_run_recipe("smoke", ["budget.max_usd=5"])
    with pytest.raises(UsageError, match=r"budget\.max_usd=5 needs a price.*budget\.usd_per_hour"):
        build_budget_guard(config, tmp_path, str(tmp_path), 10)
    config = load_run_recipe("smoke", ["budget.max_usd=5", "budget.usd_per_hour=0.9"])
    [guard] = build_budget_guard(config, tmp_path, str(tmp_path), 10)
    assert guard.price.usd_per_hour == 0.9


def test_a_budget_spent_before_the_launch_stops_before_any_training(tmp_path: Path) -> None:
    """A relaunch whose earlier launches spent $12 of a $10 budget: refused at the start, naming the key."""
    (tmp_path / SPEND_FILE).write_text(json.dumps({"hours": 2.0, "usd": 12.0, "launches": 2}))
    guard = guard_for(tmp_path, FakeClock(), max_usd=10.0, resuming=True)
    with pytest.raises(OverBudget, match=r"spent \$12\.00.*budget\.max_usd=\$10\.00.*budget\.max_usd=13\.2"):
        guard.fit_start(FakeState(), RecordingLogger())


def test_the_spend_of_earlier_launches_counts(tmp_path: Path) -> None:
    """$1.00 spent by an earlier launch: after one $0.15 epoch the run has spent $1.15, and a fresh run in the same
    folder (not a resume) starts from nothing."""
    (tmp_path / SPEND_FILE).write_text(json.dumps({"hours": 1.0, "usd": 1.0, "launches": 1}))
    clock = FakeClock()
    guard = guard_for(tmp_path, clock, resuming=True)
    state, logger = started(guard)
    run_epoch(guard, state, clock, logger, 10.0, 50.0)
    assert guard.last is not None and guard.last.spent.usd == pytest.approx(1.15)
    fresh = guard_for(tmp_path, FakeClock())
    started(fresh)
    assert fresh.earlier.usd == 0.0


# ---- end to end: stop, resume, same weights ----


class TickingClock:
    """Every reading a minute later than the one before: a run that costs the same wherever it runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 60.0
        return self.now


def tiny_run(folder: Path, *extra: str) -> list[str]:
    """A 4-class synthetic run of 2 epochs of 4 steps (resnet18, 32 px), in this process."""
    return [
        "smoke", f"save_folder={folder}", "run_name=budgeted", "autoresume=true", "max_duration=2ep",
        "eval_interval=1ep", "save_interval=100ep", "global_batch_size=4", "eval_batch_size=8",
        "data.num_workers=0", "logging.progress_bar=false", "model.name=resnet18", "data.source=synthetic",
        "data.num_classes=4", "data.synthetic_train_samples=16", "data.synthetic_val_samples=8", *extra,
    ]  # fmt: skip


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    latest = (folder / "latest-rank0.pt").resolve()
    assert latest.name.endswith("-ba8-rank0.pt"), latest.name
    return torch.load(latest, weights_only=False)["state"]["model"]


def test_a_stopped_run_resumes_with_a_raised_budget_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At $60/h and a minute a clock reading, a $20 budget below the projected cost warns after epoch 1 of 2 and
    stops there with a checkpoint, under the limit (exit status 5); relaunched with the raised budget the stop
    names, it finishes with the same weights as a run never stopped."""
    monkeypatch.setattr(budget_guard, "wall_clock", TickingClock())
    assert train.main(tiny_run(tmp_path / "uninterrupted")) == 0

    folder = tmp_path / "run"
    assert (
        train.main(tiny_run(folder, "budget.usd_per_hour=60", "budget.max_usd=20"))
        == BUDGET_STOPPED_EXIT_STATUS
    )
    out = capsys.readouterr().out
    assert "budget: epoch 1/2 · " in out and "of a $20.00 budget" in out
    assert json.loads((folder / SPEND_FILE).read_text())["usd"] <= 20
    codes = [finding.code for finding in read_findings(folder) if finding.source == budget_guard.SOURCE]
    assert codes == ["budget_projected_over", "stopped_before_budget"]
    stopped_at = (folder / "latest-rank0.pt").resolve().name
    assert stopped_at.startswith("ep1-ba4") and stopped_at in out and "exit status 5" in out
    raised = out.split("relaunch with ")[-1].split()[0]
    assert raised.startswith("budget.max_usd=")

    assert train.main(tiny_run(folder, "budget.usd_per_hour=60", raised)) == 0
    weights, expected = final_weights(folder), final_weights(tmp_path / "uninterrupted")
    assert [name for name in expected if not torch.equal(weights[name], expected[name])] == []
    assert json.loads((folder / SPEND_FILE).read_text())["launches"] == 2


# ---- the price ----


def test_the_recipe_hardware_is_priced_from_the_planners_table() -> None:
    config = load_run_recipe("smoke", ["hardware=1xT4 (g4dn.xlarge)"])
    price = recipe_price(config, parse_hardware(config.hardware))
    assert price.usd_per_hour == INSTANCES["g4dn.xlarge"].usd_per_hour and "g4dn.xlarge" in price.source


def test_a_price_that_is_not_a_number_or_spot_is_refused() -> None:
    config = load_run_recipe("smoke", ["budget.usd_per_hour=cheap"])
    with pytest.raises(UsageError, match=r"budget\.usd_per_hour='cheap' is not a price"):
        recipe_price(config, parse_hardware(config.hardware))


@pytest.fixture
def ec2_endpoint(s3_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's moto server (it answers every AWS API) as the EC2 endpoint, with dummy credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", s3_endpoint)
    return s3_endpoint


def test_spot_reads_the_instance_types_current_price_from_ec2(ec2_endpoint: str, tmp_path: Path) -> None:
    """The guard's price is the newest Linux/UNIX spot price the EC2 API returns for g4dn.xlarge (moto generates
    one per zone), not the on-demand price."""
    import boto3

    history = boto3.client("ec2", region_name="us-east-1").describe_spot_price_history(
        InstanceTypes=["g4dn.xlarge"],
        ProductDescriptions=["Linux/UNIX"],
        StartTime=datetime.datetime.now(datetime.timezone.utc),
    )["SpotPriceHistory"]
    served = {float(record["SpotPrice"]) for record in history}
    config = load_run_recipe("smoke", ["hardware=1xT4 (g4dn.xlarge)", "budget.usd_per_hour=spot"])
    [guard] = build_budget_guard(config, tmp_path, str(tmp_path), 10)
    assert guard.price.usd_per_hour == max(served) != INSTANCES["g4dn.xlarge"].usd_per_hour
    assert "g4dn.xlarge spot in us-east-1" in guard.price.source


def test_spot_without_credentials_names_the_key_and_the_fix(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup off EC2
    config = load_run_recipe("smoke", ["hardware=1xT4 (g4dn.xlarge)", "budget.usd_per_hour=spot"])
    with pytest.raises(UsageError, match=r"budget\.usd_per_hour=spot.*no AWS credentials.*AWS_ACCESS_KEY_ID"):
        recipe_price(config, parse_hardware(config.hardware))


def test_spot_on_hardware_with_no_aws_instance_is_refused() -> None:
    config = load_run_recipe("smoke", ["budget.usd_per_hour=spot"])
    with pytest.raises(UsageError, match=r"needs an AWS instance, but hardware='cpu \(2 cores\)'"):
        recipe_price(config, parse_hardware(config.hardware))
