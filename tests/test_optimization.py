"""LR scaling from the per-256 base, parameter groups, optimizers and schedules."""

from __future__ import annotations

import math

import pytest
import torch
from composer.optim import CosineAnnealingWithWarmupScheduler, DecoupledAdamW, DecoupledSGDW
from omegaconf import OmegaConf

from algorithms.optimization import build_optimizer, build_scheduler, scale_learning_rate
from recipes.errors import UsageError
from recipes.schema import OptimizerConfig, SchedulerConfig


def small_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())


def optimizer_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(OptimizerConfig), overrides)


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [("linear", 1024, 0.4), ("linear", 64, 0.025), ("sqrt", 1024, 0.2), ("none", 1024, 0.1)],
)
def test_lr_rule(rule: str, batch: int, expected: float) -> None:
    plan = scale_learning_rate(0.1, batch, rule)
    assert plan.lr == pytest.approx(expected)
    assert f"{plan.lr:.6g}" in plan.describe() and rule in plan.describe()


def test_optimizer_uses_scaled_lr() -> None:
    optimizer, plan = build_optimizer(small_net(), optimizer_cfg(base_lr=0.2), global_batch_size=512)
    assert isinstance(optimizer, DecoupledSGDW)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4) == plan.lr


def test_adamw_betas() -> None:
    optimizer, _ = build_optimizer(small_net(), optimizer_cfg(name="decoupled_adamw", betas=[0.8, 0.9]), 256)
    assert isinstance(optimizer, DecoupledAdamW)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)


def test_bn_and_bias_excluded_from_weight_decay() -> None:
    net = small_net()
    optimizer, _ = build_optimizer(
        net, optimizer_cfg(weight_decay=1e-3, exclude_bn_and_bias_from_weight_decay=True), 256
    )
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == pytest.approx(1e-3) and not_decayed["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [net[0].weight.shape]
    assert len(not_decayed["params"]) == 3  # conv bias, BN weight, BN bias


def test_weight_decay_really_skips_bn_after_a_step() -> None:
    net = small_net()
    optimizer, _ = build_optimizer(
        net, optimizer_cfg(weight_decay=0.5, momentum=0.0, exclude_bn_and_bias_from_weight_decay=True), 256
    )
    bn_before = net[1].weight.detach().clone()
    conv_before = net[0].weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(net[1].weight, bn_before)
    assert not torch.equal(net[0].weight, conv_before)


def test_warmup_cosine_scheduler() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"t_warmup": "2ep", "alpha_f": 0.1})
    optimizer, _ = build_optimizer(small_net(), optimizer_cfg(), 256)
    scheduler = build_scheduler(cfg, optimizer, "10ep", batches_per_epoch=5)
    assert isinstance(scheduler, CosineAnnealingWithWarmupScheduler)
    assert scheduler.alpha_f == pytest.approx(0.1)


def test_one_cycle_peaks_at_scaled_lr_and_ends_low() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"name": "one_cycle", "pct_start": 0.3})
    optimizer, plan = build_optimizer(small_net(), optimizer_cfg(base_lr=0.1), 512)
    scheduler = build_scheduler(cfg, optimizer, "4ep", batches_per_epoch=25)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(lrs) == pytest.approx(plan.lr, rel=1e-3)
    assert lrs[0] == pytest.approx(plan.lr / 25, rel=1e-3)
    assert abs(lrs.index(max(lrs)) - 30) <= 1
    assert lrs[-1] < plan.lr / 1000
    assert not any(math.isnan(x) for x in lrs)


def test_one_cycle_needs_epochs_or_batches() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"name": "one_cycle"})
    optimizer, _ = build_optimizer(small_net(), optimizer_cfg(), 256)
    with pytest.raises(UsageError, match="max_duration"):
        build_scheduler(cfg, optimizer, "1000sp", batches_per_epoch=5)
