"""The training doctor: its rules on synthetic curves (fast), and planted faults in short digits runs."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from composer.core import Callback, Precision, State
from composer.loggers import Logger

import train
from callbacks.doctor_rules import ContrastiveDiagnosis, Diagnosis, NonFiniteEvidence
from callbacks.findings import read_findings
from callbacks.training_doctor import (
    DOCTOR_STOPPED_EXIT_STATUS,
    TrainingDoctor,
)
from model import chance_loss
from recipes.loading import available_recipes
from recipes.schema import DoctorConfig
from training import trainer
from training.preflight import load_run_recipe
from training.trainer import build_doctor

CLASSES = 10
CHANCE = math.log(CLASSES)
# Like the smoke recipe: 45 batches an epoch, 1 epoch of warmup, 10 epochs; a grace of 45 batches.
WARMUP, GRACE, STEPS = 45, 45, 450
PEAK_LR = 1e-3


def cosine_lr(step: int) -> float:
    """Linear warmup to the peak, then cosine decay to zero (the recipes' cosine_warmup)."""
    if step <= WARMUP:
        return PEAK_LR * step / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * progress))


def healthy_loss(step: int, floor: float = 0.02) -> float:
    """A run that learns: from ln(C) down to a low floor."""
    return floor + (CHANCE - floor) * math.exp(-step / 40)


def noisy(values: Callable[[int], float], spread: float, seed: int = 0) -> Callable[[int], float]:
    """The curve with multiplicative batch-to-batch noise, seeded."""
    generator = random.Random(seed)
    cache: dict[int, float] = {}

    def curve(step: int) -> float:
        if step not in cache:
            cache[step] = values(step) * math.exp(generator.gauss(0, spread))
        return cache[step]

    return curve


def replay(
    loss: Callable[[int], float],
    grad_norm: Callable[[int], float] | None = None,
    lr: Callable[[int], float] = cosine_lr,
    steps: int = STEPS,
    settings: DoctorConfig | None = None,
    samples_per_microbatch: int | None = 32,
    classes: int = CLASSES,
    chance_loss: float | None = None,
) -> Diagnosis:
    """Feed a synthetic run to a Diagnosis, batch by batch, and return it (its findings in order)."""
    diagnosis = Diagnosis(
        settings or DoctorConfig(), classes, WARMUP, GRACE, samples_per_microbatch, chance_loss=chance_loss
    )
    grad_norm = grad_norm or noisy(lambda step: 1.0 + 4.0 * math.exp(-step / 100), 0.3, seed=1)
    for step in range(1, steps + 1):
        diagnosis.observe_batch(step, loss(step), grad_norm(step), lr(step))
    return diagnosis


def codes(diagnosis: Diagnosis) -> list[str]:
    return [finding.code for finding in diagnosis.findings]


# ---- the rules, on synthetic curves ----


def test_healthy_cosine_run_fires_nothing() -> None:
    assert codes(replay(noisy(healthy_loss, 0.3))) == []


def test_end_of_healthy_run_with_tiny_lr_and_flat_low_loss_is_not_stalled() -> None:
    flat_low = noisy(lambda step: healthy_loss(step, floor=0.3), 0.1)
    assert codes(replay(flat_low)) == []


def test_loss_stuck_at_chance_fires_loss_at_chance_after_warmup_and_grace() -> None:
    diagnosis = replay(noisy(lambda step: CHANCE, 0.02))
    assert codes(diagnosis) == ["loss_at_chance"]
    finding = diagnosis.findings[0]
    assert finding.step == WARMUP + GRACE
    assert "the chance loss 2.303" in finding.message and f"{GRACE} of them past warmup" in finding.message


# Under binary cross-entropy a uniform guess scores ln(C) + (C - 1) ln(C / (C - 1)): 7.907 for 1000 classes,
# a full unit above ln(1000) = 6.908 (model.chance_loss).
BCE_CLASSES = 1000
BCE_CHANCE = chance_loss("binary_cross_entropy", BCE_CLASSES)


def test_bce_run_at_its_chance_loss_fires_loss_at_chance() -> None:
    diagnosis = replay(noisy(lambda step: BCE_CHANCE, 0.02), classes=BCE_CLASSES, chance_loss=BCE_CHANCE)
    assert codes(diagnosis) == ["loss_at_chance"]
    assert "within 2% of the chance loss 7.907" in diagnosis.findings[0].message


def test_bce_run_that_learns_slowly_is_not_at_chance() -> None:
    """1000 classes learn slowly: 7.3 by the end of the grace, 8 % below BCE's chance but above ln(1000)."""
    learning = noisy(lambda step: 1.0 + (BCE_CHANCE - 1.0) * math.exp(-step / 1000), 0.02)
    assert codes(replay(learning, classes=BCE_CLASSES, chance_loss=BCE_CHANCE)) == []
    # Measured against the cross-entropy's ln(1000) instead, the same run looks stuck.
    assert codes(replay(learning, classes=BCE_CLASSES)) == ["loss_at_chance"]


def test_loss_rising_from_its_minimum_fires_diverging() -> None:
    def rising(step: int) -> float:
        return healthy_loss(step) + (0.01 * (step - 150) if step > 150 else 0)

    diagnosis = replay(noisy(rising, 0.1), steps=300)
    assert codes(diagnosis) == ["loss_diverging"]
    assert 200 < diagnosis.findings[0].step < 260


def test_loss_exploding_from_the_start_fires_diverging_before_a_full_window() -> None:
    diagnosis = replay(noisy(lambda step: CHANCE * (1 + step), 0.1), steps=30)
    assert "loss_diverging" in codes(diagnosis)
    assert diagnosis.findings[codes(diagnosis).index("loss_diverging")].step < 20


def test_single_batch_many_times_the_median_fires_spike() -> None:
    base = noisy(healthy_loss, 0.2)
    diagnosis = replay(lambda step: 8.0 if step == 200 else base(step))
    assert codes(diagnosis) == ["loss_spike"]
    assert diagnosis.findings[0].step == 200


def test_loss_flat_and_high_while_the_lr_decays_fires_stalled() -> None:
    too_low_lr = noisy(lambda step: 1.6 + (CHANCE - 1.6) * math.exp(-step / 30), 0.02)
    diagnosis = replay(too_low_lr)
    assert codes(diagnosis) == ["loss_stalled"]
    # Only once the cosine has brought the LR under a tenth of its peak.
    assert cosine_lr(diagnosis.findings[0].step) <= 0.1 * PEAK_LR


def test_gradient_norm_outlier_fires_exploding() -> None:
    norms = noisy(lambda step: 1.0, 0.2, seed=3)
    diagnosis = replay(noisy(healthy_loss, 0.2), lambda step: 50.0 if step == 300 else norms(step))
    assert codes(diagnosis) == ["grad_norm_exploding"]
    assert diagnosis.findings[0].step == 300


def test_gradient_norm_collapse_with_the_loss_high_fires_vanishing() -> None:
    plateau = noisy(lambda step: 1.6 + (CHANCE - 1.6) * math.exp(-step / 30), 0.02)
    norms = noisy(lambda step: 1.0 if step < 150 else 1e-5, 0.2, seed=4)
    diagnosis = replay(plateau, norms, lr=lambda step: PEAK_LR, steps=260)
    assert codes(diagnosis) == ["grad_norm_vanishing"]


def test_summed_loss_fires_initial_loss_and_names_the_batch_size() -> None:
    diagnosis = replay(noisy(lambda step: 32 * healthy_loss(step, floor=0.005), 0.2))
    assert codes(diagnosis) == ["initial_loss_too_high"]
    assert (
        "summed" in diagnosis.findings[0].message
        and "32 samples per microbatch" in diagnosis.findings[0].message
    )


def test_each_finding_is_reported_once() -> None:
    diagnosis = replay(lambda step: 8.0 if step % 100 == 0 else healthy_loss(step))
    assert codes(diagnosis) == ["loss_spike"]


def test_accuracy_at_chance_only_after_warmup_and_grace() -> None:
    diagnosis = Diagnosis(DoctorConfig(), CLASSES, WARMUP, GRACE)
    assert diagnosis.observe_eval(WARMUP, 0.10) == []
    assert diagnosis.observe_eval(WARMUP + GRACE, 0.40) == []
    findings = diagnosis.observe_eval(WARMUP + GRACE, 0.11)
    assert [finding.code for finding in findings] == ["accuracy_at_chance"]
    assert "0.1100" in findings[0].message and "1/10 = 0.1000" in findings[0].message


def test_accuracy_at_chance_with_two_classes_uses_the_absolute_cap() -> None:
    diagnosis = Diagnosis(DoctorConfig(), 2, 0, 0)
    assert diagnosis.observe_eval(10, 0.60) == []
    assert [finding.code for finding in diagnosis.observe_eval(10, 0.52)] == ["accuracy_at_chance"]


def evidence(**changes: Any) -> NonFiniteEvidence:
    plain = NonFiniteEvidence(
        step=31, loss=math.nan, grad_norm=math.nan, lr=1e-3, fp16=False, inputs_finite=True
    )
    return replace(plain, **changes)


def test_nonfinite_cause_is_data_when_inputs_are_not_finite() -> None:
    finding = replay(noisy(healthy_loss, 0.2), steps=30).explain_nonfinite(evidence(inputs_finite=False))
    assert finding.code == "loss_not_finite" and finding.severity == "error" and finding.step == 31
    assert "the data is the cause" in finding.message


def test_nonfinite_cause_is_fp16_overflow_under_amp_fp16() -> None:
    finding = replay(noisy(healthy_loss, 0.2), steps=30).explain_nonfinite(evidence(fp16=True))
    assert "amp_fp16" in finding.message and "amp_bf16" in finding.message


def test_nonfinite_cause_is_the_learning_rate_when_the_loss_was_climbing() -> None:
    climbing = replay(
        lambda step: healthy_loss(step) * (1 if step < 100 else 1 + (step - 100) / 4), steps=130
    )
    finding = climbing.explain_nonfinite(evidence(step=131))
    assert (
        "It was climbing before" in finding.message and "learning rate is likely too high" in finding.message
    )


def test_nonfinite_without_evidence_lists_the_candidates() -> None:
    finding = replay(noisy(healthy_loss, 0.2), steps=30).explain_nonfinite(
        evidence(inspection_checkpoint="x.pt")
    )
    assert "Nothing points at one cause" in finding.message and "Candidates" in finding.message
    assert "x.pt" in finding.message


def test_nonfinite_gradient_with_a_finite_loss_has_its_own_code() -> None:
    finding = Diagnosis(DoctorConfig(), CLASSES, 0, 0).explain_nonfinite(
        evidence(loss=2.0, grad_norm=math.inf, fp16=True, skipped_steps=25)
    )
    assert finding.code == "grad_norm_not_finite" and "25 steps in a row" in finding.message


def test_resumed_diagnosis_keeps_its_history_and_does_not_repeat() -> None:
    stuck = noisy(lambda step: CHANCE, 0.02)
    first = replay(stuck, steps=120)
    assert codes(first) == ["loss_at_chance"]
    resumed = Diagnosis(DoctorConfig(), CLASSES, WARMUP, GRACE)
    resumed.load_state_dict(first.state_dict())
    for step in range(121, 200):
        resumed.observe_batch(step, stuck(step), 1.0, PEAK_LR)
    assert codes(resumed) == []


def test_build_doctor_reads_warmup_and_grace_from_the_recipe(tmp_path: Path) -> None:
    config = load_run_recipe("smoke", ["scheduler.t_warmup=2ep", "doctor.chance_grace=100ba"])
    [doctor] = build_doctor(config, CLASSES, tmp_path, batches_per_epoch=45)
    assert isinstance(doctor, TrainingDoctor)
    assert doctor.diagnosis.warmup_batches == 90 and doctor.diagnosis.grace_batches == 100
    assert build_doctor(load_run_recipe("smoke", ["doctor.enabled=false"]), CLASSES, tmp_path, 45) == []
    # A classifier's chance rules mean nothing to a contrastive loss: pretraining gets the contrastive doctor.
    [contrastive] = build_doctor(load_run_recipe("moco_v3_smoke"), CLASSES, tmp_path, 45)
    assert isinstance(contrastive.diagnosis, ContrastiveDiagnosis)


@pytest.mark.parametrize(
    "recipe", [name for name in available_recipes() if load_run_recipe(name).task == "supervised"]
)
def test_two_batches_at_chance_of_every_recipe_fire_nothing(recipe: str, tmp_path: Path) -> None:
    # What a few-batch run of a recipe shows the doctor (tests/proof/test_recipes_run_as_configured.py): 100 classes, the
    # recipe's loss near its chance value (ln 100 for cross-entropy; the BCEs' own).
    config = load_run_recipe(recipe, ["max_duration=2ba", "global_batch_size=8"])
    [doctor] = build_doctor(config, 100, tmp_path, batches_per_epoch=2)
    at_chance = chance_loss(config.model.loss, 100)
    for step in (1, 2):
        assert doctor.diagnosis.observe_batch(step, at_chance * (1 + 0.01 * step), 5.0, 0.1) == []
    assert doctor.diagnosis.observe_eval(2, 0.0) == []


# ---- the callback's gradient norm, on a stand-in for Composer's state ----


class RecordingLogger:
    """Collects what the callback logs."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)


def fake_state(gradient: torch.Tensor, precision: Precision, scale: float) -> SimpleNamespace:
    """Just what the callback reads at one batch: a one-parameter model with this gradient, loss, LR, scaler."""
    model = torch.nn.Linear(len(gradient), 1, bias=False)
    model.weight.grad = gradient.reshape(1, -1).clone()
    return SimpleNamespace(
        model=model,
        precision=precision,
        scaler=torch.amp.GradScaler("cpu", init_scale=scale),
        timestamp=SimpleNamespace(batch=1),
        total_loss_dict={"loss/train/total": CHANCE},
        optimizers=[SimpleNamespace(param_groups=[{"lr": PEAK_LR}])],
    )


def one_batch(doctor: TrainingDoctor, state: SimpleNamespace) -> dict[str, float]:
    """The events of one batch that the gradient norm goes through; returns what was logged."""
    logger = RecordingLogger()
    doctor.after_backward(state, logger)
    doctor.after_train_batch(state, logger)
    doctor.batch_end(state, logger)
    return logger.metrics


def test_grad_norm_is_logged_unscaled_under_amp_fp16(tmp_path: Path) -> None:
    [doctor] = build_doctor(load_run_recipe("smoke"), CLASSES, tmp_path, 45)
    # fp16 gradients arrive multiplied by the GradScaler's scale: 1024 * (3, 4) has norm 5120, the true one 5.
    logged = one_batch(doctor, fake_state(torch.tensor([3.0, 4.0]) * 1024, Precision.AMP_FP16, 1024.0))
    assert logged["train/grad_norm"] == pytest.approx(5.0)
    logged = one_batch(doctor, fake_state(torch.tensor([3.0, 4.0]), Precision.FP32, 1024.0))
    assert logged["train/grad_norm"] == pytest.approx(5.0)


def test_an_fp16_step_skipped_for_inf_gradients_is_not_fatal(tmp_path: Path) -> None:
    [doctor] = build_doctor(load_run_recipe("smoke"), CLASSES, tmp_path, 45)
    logged = one_batch(doctor, fake_state(torch.tensor([math.inf, 1.0]), Precision.AMP_FP16, 1024.0))
    assert logged["train/grad_norm"] == math.inf and doctor.stopping is None and doctor.findings == []


# ---- planted faults in short digits runs ----

# The smoke recipe at half its batch for 20 batches, its warmup and the doctor's grace and smoothing window cut to
# match: each rule gets its chance to fire (warmup, grace, one evaluation at the end) and nothing more.
SHORT_RUN = [
    "global_batch_size=16", "max_duration=20ba", "scheduler.t_warmup=5ba", "doctor.chance_grace=10ba",
    "doctor.smoothing_batches=10",
    "eval_interval=20ba", "save_interval=10ba", "logging.progress_bar=false", "data.num_workers=0",
    "logging.metrics_every_n_batches=1",
]  # fmt: skip
SMOKE_BASE_LR = 0.008


class ShuffledLabels(Callback):
    """Test-only: every batch's labels permuted, so they no longer say what the images show."""

    def after_dataloader(self, state: State, logger: Logger) -> None:
        inputs, targets = state.batch
        state.batch = (inputs, targets[torch.randperm(len(targets))])


class NaNLoss(Callback):
    """Test-only: the loss of one batch turned into NaN, as a broken loss function would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_loss(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) + 1 == self.step:
            state.loss = state.loss * math.nan


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., list[Callback]]]:
    """Lets a test add its own callbacks to train.py's Trainer, beside the usual ones."""
    extra: list[Callback] = []
    standard = trainer.build_callbacks
    monkeypatch.setattr(trainer, "build_callbacks", lambda device: [*standard(device), *extra])

    def add(*callbacks: Callback) -> list[Callback]:
        extra.extend(callbacks)
        return extra

    yield add


def short_run(folder: Path, cache: Path, *overrides: str) -> tuple[int, dict[str, Any]]:
    """Train the smoke recipe for a few dozen batches; return the exit status and summary.json."""
    status = train.main(["smoke", f"save_folder={folder}", f"data.cache_dir={cache}", *SHORT_RUN, *overrides])
    return status, json.loads((folder / "summary.json").read_text())


def doctor_codes(folder: Path) -> list[str]:
    return [finding.code for finding in read_findings(folder) if finding.source == "doctor"]


def test_learning_rate_100x_too_high_is_found_diverging(tmp_path: Path, digits_cache: Path) -> None:
    status, summary = short_run(tmp_path, digits_cache, f"optimizer.base_lr={SMOKE_BASE_LR * 100}")
    found = doctor_codes(tmp_path)
    assert {"loss_diverging", "loss_not_finite"} & set(found), found
    assert summary["doctor_findings"] == len(found)
    assert [finding["code"] for finding in summary["findings"] if finding["source"] == "doctor"] == found
    assert status in (0, DOCTOR_STOPPED_EXIT_STATUS)


def test_learning_rate_10000x_too_low_is_found_at_chance(tmp_path: Path, digits_cache: Path) -> None:
    status, summary = short_run(tmp_path, digits_cache, f"optimizer.base_lr={SMOKE_BASE_LR * 1e-4}")
    assert status == 0
    assert "loss_at_chance" in doctor_codes(tmp_path)
    [finding] = [finding for finding in summary["findings"] if finding["code"] == "loss_at_chance"]
    assert finding["step"] == 15  # 5 batches of warmup + 10 of grace


def test_shuffled_labels_are_found_at_chance_accuracy(
    tmp_path: Path, digits_cache: Path, planted: Callable[..., list[Callback]]
) -> None:
    planted(ShuffledLabels())
    status, summary = short_run(tmp_path, digits_cache)
    assert status == 0
    assert "accuracy_at_chance" in doctor_codes(tmp_path)
    assert summary["val/acc1"] <= 0.15


def test_nan_loss_stops_the_run_saves_it_for_inspection_and_exits_3(
    tmp_path: Path,
    digits_cache: Path,
    planted: Callable[..., list[Callback]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    planted(NaNLoss(step=13))
    status, summary = short_run(tmp_path, digits_cache)
    assert status == DOCTOR_STOPPED_EXIT_STATUS
    assert doctor_codes(tmp_path) == ["loss_not_finite"]
    assert summary["steps"] == 13 and summary["stopped_by_doctor"] == "loss_not_finite"
    assert summary["weights_finite"] is False and summary["val/acc1"] is None  # not evaluated
    assert (tmp_path / "doctor-nonfinite-ba13.pt").exists()
    # The last good checkpoint (batch 10) is still there, and still what `latest` points at.
    assert (tmp_path / "ep0-ba10-rank0.pt").exists() and not (tmp_path / "ep0-ba13-rank0.pt").exists()
    assert (tmp_path / "latest-rank0.pt").resolve().name == "ep0-ba10-rank0.pt"
    out = capsys.readouterr().out
    assert "error [loss_not_finite] at step 13" in out and "Nothing points at one cause" in out
    assert "stopped by the training doctor" in out
