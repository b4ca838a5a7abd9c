"""The training doctor on contrastive (MoCo v3) runs: its rules on synthetic curves, and planted faults in tiny
pretraining runs on the digits."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import model
import train
from callbacks.doctor_rules import ContrastiveDiagnosis, ContrastiveObjective, Diagnosis, official_moco_lr
from callbacks.findings import Finding, read_findings
from callbacks.training_doctor import OUTPUT_STD_METRIC, output_std_ratio
from model import MocoOutputs, MocoV3, moco_initial_loss
from recipes.schema import DoctorConfig
from tests.test_callbacks_training_doctor import noisy

# Like moco_v3_smoke: batch 64 on one process, T = 1, the terms summed (a start of 4 ln 64 = 16.6), LARS at the
# official 0.6 per 256 (0.15 applied), 22 batches an epoch with one of warmup.
SMOKE = ContrastiveObjective(
    keys_per_rank=64, world_size=1, queue_size=0, temperature=1.0, loss_reduction="sum"
)
BATCH, WARMUP, GRACE, STEPS = 64, 22, 40, 300
PEAK_LR = 0.6 * BATCH / 256


def cosine_lr(step: int, peak: float = PEAK_LR, end: int = STEPS) -> float:
    """Linear warmup to ``peak``, then a cosine to zero at ``end`` (and zero after it)."""
    if step <= WARMUP:
        return peak * step / WARMUP
    progress = min(1.0, (step - WARMUP) / (end - WARMUP))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def learning(start: float) -> Callable[[int], float]:
    """A contrastive loss that learns: from ``start`` down by a fifth (at T = 1 it cannot fall much further)."""
    return noisy(lambda step: start * (0.8 + 0.2 * math.exp(-step / 60)), spread=0.01)


def flat(start: float, moved: float = 0.02) -> Callable[[int], float]:
    """A loss that moves ``moved`` of its start over the first 50 steps and no further."""
    return noisy(lambda step: start * (1 - moved * min(step, 50) / 50), spread=0.01)


def replay(
    loss: Callable[[int], float],
    lr: Callable[[int], float] = cosine_lr,
    objective: ContrastiveObjective = SMOKE,
    epochs: float = 100,
    optimizer: str = "lars",
    batch: int = BATCH,
    settings: DoctorConfig | None = None,
    steps: int = STEPS,
) -> ContrastiveDiagnosis:
    """Feed a synthetic pretraining run to a ContrastiveDiagnosis, batch by batch."""
    diagnosis = ContrastiveDiagnosis(
        settings or DoctorConfig(),
        objective,
        warmup_batches=WARMUP,
        grace_batches=GRACE,
        global_batch_size=batch,
        official_lr=official_moco_lr(optimizer, epochs),
    )
    for step in range(1, steps + 1):
        diagnosis.observe_batch(step, loss(step), 1.0, lr(step))
    return diagnosis


def codes(diagnosis: Diagnosis) -> list[str]:
    return [finding.code for finding in diagnosis.findings]


def finding(diagnosis: Diagnosis, code: str) -> Finding:
    [found] = [finding for finding in diagnosis.findings if finding.code == code]
    return found


# ---- the rules, on synthetic curves ----


def test_healthy_contrastive_run_fires_nothing() -> None:
    diagnosis = replay(learning(SMOKE.initial_loss()))
    diagnosis.observe_output_std(STEPS, 0.9)
    assert codes(diagnosis) == []


def test_a_start_twice_the_mean_prediction_names_the_terms_summed() -> None:
    # The failure story's shape: 24.5 where about 12 was expected with the terms averaged.
    story = ContrastiveObjective(
        keys_per_rank=256, world_size=1, queue_size=200, temperature=1.0, loss_reduction="mean"
    )
    assert story.initial_loss() == pytest.approx(12.2, abs=0.1)
    diagnosis = replay(lambda step: 24.5, objective=story, steps=1)
    message = finding(diagnosis, "contrastive_initial_loss").message
    assert "24.5" in message and "12.2" in message and "2.00x" in message
    assert "summed although moco.loss_reduction is mean" in message


def test_a_start_missing_the_2t_scale_names_it() -> None:
    small_t = replace(SMOKE, temperature=0.2)
    diagnosis = replay(lambda step: small_t.initial_loss() / 0.4, objective=small_t, steps=1)
    assert "not multiplied by 2T = 0.4" in finding(diagnosis, "contrastive_initial_loss").message


def test_a_start_off_by_no_usual_factor_names_the_temperature_and_scaling() -> None:
    diagnosis = replay(lambda step: 3.3 * SMOKE.initial_loss(), steps=1)
    message = finding(diagnosis, "contrastive_initial_loss").message
    assert "matches no usual miscount" in message
    assert "moco.temperature" in message and "2T" in message


def test_a_start_within_the_tolerance_is_not_reported() -> None:
    assert codes(replay(lambda step: 1.2 * SMOKE.initial_loss(), steps=1)) == []


def test_a_loss_that_has_not_moved_after_warmup_and_grace_fires_not_moving() -> None:
    diagnosis = replay(flat(SMOKE.initial_loss()), lr=lambda step: PEAK_LR)
    assert codes(diagnosis) == ["contrastive_loss_not_moving"]
    found = finding(diagnosis, "contrastive_loss_not_moving")
    assert found.step == WARMUP + GRACE
    assert "has moved 2." in found.message and "from its start 16." in found.message


def test_lr_a_tenth_of_the_official_fires_naming_the_official_value() -> None:
    diagnosis = replay(learning(SMOKE.initial_loss()), lr=lambda step: cosine_lr(step, peak=PEAK_LR / 10))
    assert codes(diagnosis) == ["lr_below_official"]
    found = finding(diagnosis, "lr_below_official")
    assert found.step == WARMUP + 1
    assert "0.06 per 256 images: 0.1x the official 0.6 per 256" in found.message
    assert "optimizer.base_lr=0.6" in found.message


def test_the_vit_adamw_lr_under_lars_on_a_long_run_is_named_against_the_300_epoch_value() -> None:
    vit_lr = 1.5e-4 * BATCH / 256
    diagnosis = replay(
        learning(SMOKE.initial_loss()), lr=lambda step: cosine_lr(step, peak=vit_lr), epochs=600
    )
    message = finding(diagnosis, "lr_below_official").message
    assert "the official 0.3 per 256" in message and "CONFIG.md" in message
    assert "MoCo v3's value for ViTs under AdamW" in message


def test_an_optimizer_without_an_official_value_is_not_judged() -> None:
    tiny = lambda step: cosine_lr(step, peak=1e-6)  # noqa: E731
    assert "lr_below_official" not in codes(
        replay(learning(SMOKE.initial_loss()), lr=tiny, optimizer="decoupled_adamw")
    )


def test_a_cosine_that_decayed_before_the_loss_moved_fires_decayed() -> None:
    early = lambda step: cosine_lr(step, end=80)  # noqa: E731
    decayed = replay(flat(SMOKE.initial_loss()), lr=early)
    found = finding(decayed, "lr_decayed_before_learning")
    assert found.step > WARMUP + GRACE and early(found.step) < 0.1 * PEAK_LR
    assert "to zero" not in found.message and "of its peak 0.15" in found.message
    # The same loss under an LR that stays at its peak: not moving, but nothing decayed.
    held = replay(flat(SMOKE.initial_loss()), lr=lambda step: PEAK_LR)
    assert "lr_decayed_before_learning" not in codes(held)


def test_collapse_fires_below_the_fraction_of_a_healthy_spread() -> None:
    diagnosis = replay(learning(SMOKE.initial_loss()), steps=10)
    assert diagnosis.observe_output_std(10, 0.3) == []
    [collapsed] = diagnosis.observe_output_std(20, 0.05)
    assert collapsed.code == "representation_collapsed" and "0.050" in collapsed.message


def test_supervised_chance_rules_are_off_and_divergence_stays() -> None:
    # A loss sitting exactly at the prediction would be "at chance" for a classifier; here it is only slow.
    at_prediction = replay(lambda step: SMOKE.initial_loss() * (1 - 0.1 * min(step, 100) / 100))
    assert codes(at_prediction) == []
    assert at_prediction.observe_eval(STEPS, 0.0) == []
    rising = replay(lambda step: SMOKE.initial_loss() * (1 if step < 100 else 2.0))
    assert "loss_diverging" in codes(rising)


def test_a_resumed_diagnosis_measures_progress_from_the_original_start() -> None:
    first = replay(flat(SMOKE.initial_loss()), steps=30)
    resumed = ContrastiveDiagnosis(DoctorConfig(), SMOKE, WARMUP, GRACE, BATCH, official_moco_lr("lars", 100))
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for step in range(31, STEPS):
        resumed.observe_batch(step, flat(SMOKE.initial_loss())(step), 1.0, PEAK_LR)
    assert codes(resumed) == ["contrastive_loss_not_moving"]


def test_a_smaller_microbatch_lowers_the_predicted_start() -> None:
    diagnosis = ContrastiveDiagnosis(DoctorConfig(), SMOKE, WARMUP, GRACE, BATCH, None)
    diagnosis.use_microbatch(16)
    assert diagnosis.chance_loss == pytest.approx(moco_initial_loss(16, 0, 1.0, "sum"))
    assert diagnosis.observe_batch(1, moco_initial_loss(16, 0, 1.0, "sum"), 1.0, 0.0) == []


def test_output_std_ratio_is_one_for_spread_keys_and_zero_for_one_vector() -> None:
    generator = torch.Generator().manual_seed(0)
    spread = nn.functional.normalize(torch.randn(512, 256, generator=generator), dim=1)
    assert float(output_std_ratio(MocoOutputs(spread, spread, spread[:256], spread[256:]))) == pytest.approx(
        1.0, abs=0.05
    )
    same = nn.functional.normalize(torch.ones(64, 256), dim=1)
    assert float(output_std_ratio(MocoOutputs(same, same, same, same))) == 0.0


# ---- planted faults in tiny pretraining runs ----


# No checkpoints (Composer's interval check returns False for a zero interval, composer/utils/misc.py:107) and no
# k-NN monitor: the doctor reads neither, and writing two ResNet-50s and LARS state, or embedding the 1,797 digits
# at step 0, is most of a tiny run.
TINY = [
    "data.subset_size=16",
    "global_batch_size=8",
    "data.num_workers=0",
    "logging.progress_bar=false",
    "save_interval=0ep",
    "moco.knn_interval=null",
]


@pytest.fixture
def pretrain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_cache: Path
) -> Callable[..., tuple[list[Finding], list[dict[str, Any]]]]:
    """Runs moco_v3_smoke on 16 digits at batch 8 with overrides; returns the doctor's findings and metrics."""

    def run(*overrides: str) -> tuple[list[Finding], list[dict[str, Any]]]:
        folder = tmp_path / "run"
        status = train.main(
            ["moco_v3_smoke", f"save_folder={folder}", f"data.cache_dir={digits_cache}", *TINY, *overrides]
        )
        assert status == 0
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        findings = [found for found in read_findings(folder) if found.source == "doctor"]
        return findings, [json.loads(line) for line in lines]

    return run


def test_healthy_smoke_settings_are_silent_and_log_the_collapse_signal(pretrain: Callable[..., Any]) -> None:
    # Past the 2-batch warmup, so the LR is judged too; the grace (300ba) is longer than any tiny run.
    findings, metrics = pretrain("max_duration=4ba", "logging.metrics_every_n_batches=2")
    assert findings == []
    ratios = {line["step"]: line[OUTPUT_STD_METRIC] for line in metrics if OUTPUT_STD_METRIC in line}
    assert list(ratios) == [2, 4]
    assert all(0.7 < ratio < 1.3 for ratio in ratios.values()), ratios


def test_terms_summed_under_mean_are_found_at_the_first_batch(
    pretrain: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    averaged = MocoV3.loss
    monkeypatch.setattr(MocoV3, "loss", lambda self, outputs, batch: 2 * averaged(self, outputs, batch))
    findings, _ = pretrain("max_duration=1ba", "moco.loss_reduction=mean")
    [found] = findings
    assert found.code == "contrastive_initial_loss" and found.step == 1
    assert "summed although moco.loss_reduction is mean" in found.message


def test_a_base_lr_a_tenth_of_the_official_is_found(pretrain: Callable[..., Any]) -> None:
    # Without warmup the first step runs at the peak, where the LR is judged.
    findings, _ = pretrain("max_duration=1ba", "scheduler.t_warmup=0ba", "optimizer.base_lr=0.06")
    [found] = findings
    assert found.code == "lr_below_official" and found.step == 1
    assert "the official 0.6 per 256" in found.message


def test_a_cosine_decayed_to_zero_early_is_found(pretrain: Callable[..., Any]) -> None:
    findings, _ = pretrain(
        "max_duration=6ba", "scheduler.t_warmup=0ba", "doctor.chance_grace=1ba", "doctor.smoothing_batches=2"
    )
    assert "lr_decayed_before_learning" in [found.code for found in findings]


class ConstantOutput(nn.Module):
    """Test-only: a projector's output that no longer depends on the image (a collapsed representation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0 + 1


def test_a_collapsed_projector_is_found(
    pretrain: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = model.build_mlp

    def collapsed(*args: Any, last_bn: bool = True, **kwargs: Any) -> nn.Sequential:
        mlp = built(*args, last_bn=last_bn, **kwargs)
        return nn.Sequential(mlp, ConstantOutput()) if last_bn else mlp  # the projector, not the predictor

    monkeypatch.setattr(model, "build_mlp", collapsed)
    findings, metrics = pretrain("max_duration=1ba", "logging.metrics_every_n_batches=1")
    assert [found.code for found in findings] == ["representation_collapsed"]
    assert [line[OUTPUT_STD_METRIC] for line in metrics if OUTPUT_STD_METRIC in line] == [0.0]
