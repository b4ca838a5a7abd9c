"""Optimizer and learning-rate schedule from a recipe, with the LR scaled from its per-256 base by the batch size.

Composer has the optimizers and warmup schedules; what it lacks is the batch-size rule (recipes state one LR per
256 images so a phase can change its batch without re-tuning) and parameter groups that keep weight decay off
BatchNorm and bias parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from composer.core import Time, TimeUnit
from composer.optim import (
    ComposerScheduler,
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    DecoupledSGDW,
    LinearWithWarmupScheduler,
)
from omegaconf import DictConfig

from recipes.errors import UsageError

REFERENCE_BATCH_SIZE = 256


@dataclass(frozen=True)
class LearningRatePlan:
    """The applied learning rate and how it was derived, printed at start and saved in the summary."""

    base_lr: float
    global_batch_size: int
    rule: str
    lr: float

    def describe(self) -> str:
        """One line a person can check by hand."""
        ratio = self.global_batch_size / REFERENCE_BATCH_SIZE
        factor = {"linear": f"{ratio:g}", "sqrt": f"sqrt({ratio:g})", "none": "1"}[self.rule]
        return (
            f"LR {self.lr:.6g} = base_lr {self.base_lr:g} per {REFERENCE_BATCH_SIZE} images x {factor} "
            f"({self.rule} rule, global batch {self.global_batch_size})"
        )


def batch_size_factor(global_batch_size: int, rule: str) -> float:
    """What the linear (Goyal et al. 2017) or square-root rule multiplies a per-256 base LR by."""
    ratio = global_batch_size / REFERENCE_BATCH_SIZE
    factors = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}
    if rule not in factors:
        raise UsageError(f"'optimizer.lr_scaling' is '{rule}'; use one of {', '.join(factors)}.")
    return factors[rule]


def scale_learning_rate(base_lr: float, global_batch_size: int, rule: str) -> LearningRatePlan:
    """Apply the linear (Goyal et al. 2017) or square-root batch-size rule to a per-256 base LR."""
    return LearningRatePlan(
        base_lr, global_batch_size, rule, base_lr * batch_size_factor(global_batch_size, rule)
    )


def base_lr_for(lr: float, global_batch_size: int, rule: str) -> float:
    """The per-256 ``optimizer.base_lr`` that the batch-size rule turns into the applied ``lr`` (the inverse)."""
    return lr / batch_size_factor(global_batch_size, rule)


def parameter_groups(model: torch.nn.Module, weight_decay: float, exclude_bn_and_bias: bool) -> list[dict]:
    """One group, or two when BatchNorm weights and biases (all 1-D parameters) are kept out of weight decay."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_and_bias:
        return [{"params": parameters, "weight_decay": weight_decay}]
    decayed = [p for p in parameters if p.ndim > 1]
    not_decayed = [p for p in parameters if p.ndim <= 1]
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, optimizer_cfg: DictConfig, global_batch_size: int
) -> tuple[torch.optim.Optimizer, LearningRatePlan]:
    """Composer's decoupled SGDW or AdamW at the batch-scaled learning rate."""
    plan = scale_learning_rate(optimizer_cfg.base_lr, global_batch_size, optimizer_cfg.lr_scaling)
    groups = parameter_groups(
        model, optimizer_cfg.weight_decay, optimizer_cfg.exclude_bn_and_bias_from_weight_decay
    )
    if optimizer_cfg.name == "decoupled_sgdw":
        optimizer = DecoupledSGDW(
            groups,
            lr=plan.lr,
            momentum=optimizer_cfg.momentum,
            nesterov=optimizer_cfg.nesterov,
            weight_decay=optimizer_cfg.weight_decay,
        )
    elif optimizer_cfg.name == "decoupled_adamw":
        optimizer = DecoupledAdamW(
            groups,
            lr=plan.lr,
            betas=tuple(optimizer_cfg.betas),
            eps=optimizer_cfg.eps,
            weight_decay=optimizer_cfg.weight_decay,
        )
    else:
        raise UsageError(
            f"'optimizer.name' is '{optimizer_cfg.name}'; use decoupled_sgdw or decoupled_adamw."
        )
    return optimizer, plan


def total_training_batches(max_duration: str, batches_per_epoch: int) -> int:
    """Length of the run in optimizer steps, for schedules that need it up front (one-cycle)."""
    duration = Time.from_timestring(max_duration)
    if duration.unit == TimeUnit.EPOCH:
        return duration.value * batches_per_epoch
    if duration.unit == TimeUnit.BATCH:
        return duration.value
    raise UsageError(
        f"'max_duration' is '{max_duration}'; the one_cycle schedule needs it in epochs ('90ep') or batches."
    )


def build_scheduler(
    scheduler_cfg: DictConfig,
    optimizer: torch.optim.Optimizer,
    max_duration: str,
    batches_per_epoch: int,
) -> ComposerScheduler | torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule: Composer's warmup schedules, or PyTorch's OneCycleLR stepped every batch."""
    warmup = "0ba" if str(scheduler_cfg.t_warmup) in ("0", "0ep", "0ba") else str(scheduler_cfg.t_warmup)
    if scheduler_cfg.name == "cosine_warmup":
        return CosineAnnealingWithWarmupScheduler(t_warmup=warmup, alpha_f=scheduler_cfg.alpha_f)
    if scheduler_cfg.name == "linear_warmup":
        return LinearWithWarmupScheduler(t_warmup=warmup, alpha_f=scheduler_cfg.alpha_f)
    if scheduler_cfg.name == "constant_warmup":
        return ConstantWithWarmupScheduler(t_warmup=warmup)
    if scheduler_cfg.name == "one_cycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=peak,
            total_steps=total_training_batches(max_duration, batches_per_epoch),
            pct_start=scheduler_cfg.pct_start,
            div_factor=scheduler_cfg.div_factor,
            final_div_factor=scheduler_cfg.final_div_factor,
            cycle_momentum=isinstance(optimizer, torch.optim.SGD),
        )
    raise UsageError(
        f"'scheduler.name' is '{scheduler_cfg.name}'; use cosine_warmup, linear_warmup, constant_warmup "
        "or one_cycle."
    )
