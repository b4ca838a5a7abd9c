"""Optimizer and learning-rate schedule from a recipe, with the LR scaled from its per-256 base by the batch size.

Composer has the optimizers and warmup schedules; what it lacks is the batch-size rule (recipes state one LR per
256 images so a phase can change its batch without re-tuning), parameter groups that keep weight decay off
BatchNorm and bias parameters (or normalization layers, or named parameters), LARS (MoCo v3's optimizer for ResNet-50
pretraining), and the optimizers of the reference recipes: PyTorch's SGD and timm's LAMB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from composer.optim import (
    ComposerScheduler,
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    DecoupledSGDW,
    LinearScheduler,
    LinearWithWarmupScheduler,
)
from omegaconf import DictConfig

from recipes.durations import is_zero, run_steps, steps_in
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


# Optimizers whose weight decay shrinks each weight by a fixed fraction per step, whatever the LR's size
# (Composer's: ``param *= 1 - weight_decay * lr / initial_lr``, composer/optim/decoupled_weight_decay.py:121).
# The others (PyTorch's SGD, LARS, LAMB) add weight_decay x weight to the update, which the LR then scales.
DECOUPLED_OPTIMIZERS = ("decoupled_sgdw", "decoupled_adamw")


@dataclass(frozen=True)
class WeightDecayPlan:
    """The weight decay applied at the run's batch and how it was derived, printed at start with the LR.

    A decoupled optimizer decays a fixed fraction per step, so an epoch of twice the steps (half the batch)
    decays twice as much; a coupled one decays by lr x weight_decay per step, which the linear batch rule keeps
    the same per epoch. With ``weight_decay_batch`` set, ``applied`` is the decay that gives every epoch the
    shrinkage ``weight_decay`` gave at that batch (a first-order rule: the products of ``1 - decay`` over an
    epoch then agree to within half a step's decay of the epoch's, 0.025 % of it at 5e-4)."""

    weight_decay: float
    tuned_batch: int | None
    global_batch_size: int
    decoupled: bool
    factor: float

    @property
    def applied(self) -> float:
        """The weight decay each optimizer group is built with (norm or name rules at 0 stay 0)."""
        return self.weight_decay * self.factor

    def describe(self) -> str:
        """One line a person can check by hand."""
        kind = "decoupled: a fraction per step" if self.decoupled else "coupled: scaled by the LR"
        if self.tuned_batch is None:
            return (
                f"weight decay {self.applied:.6g} as written ({kind}; optimizer.weight_decay_batch unset, so the "
                "decay per epoch changes with the batch)"
            )
        if self.factor == 1:
            return (
                f"weight decay {self.applied:.6g} as written ({kind}; the same decay per epoch as at its tuned "
                f"batch {self.tuned_batch})"
            )
        return (
            f"weight decay {self.applied:.6g} = {self.weight_decay:g} tuned at batch {self.tuned_batch} x "
            f"{self.factor:.6g} ({kind}; the same decay per epoch at global batch {self.global_batch_size})"
        )


def scale_weight_decay(optimizer_cfg: DictConfig, global_batch_size: int) -> WeightDecayPlan:
    """``optimizer.weight_decay`` at the run's batch: rescaled so that each epoch decays the weights as much as
    at ``optimizer.weight_decay_batch`` (the batch it was tuned at), or as written when that is unset.

    Per epoch (N images, batch B) a decoupled optimizer decays ``N / B x d``, a coupled one
    ``N / B x lr(B) x d``; keeping that equal to its value at the tuned batch T gives ``d(B) = d x B / T`` for
    decoupled ones, and ``d x (B / T) x rule(T) / rule(B)`` for coupled ones (1 under the linear rule).
    """
    tuned = optimizer_cfg.weight_decay_batch
    decoupled = optimizer_cfg.name in DECOUPLED_OPTIMIZERS
    factor = 1.0
    if tuned is not None:
        if tuned < 1:
            raise UsageError(
                f"'optimizer.weight_decay_batch' is {tuned}; give the global batch optimizer.weight_decay was "
                "tuned at (Mosaic's 5e-4: 2048), or null to apply it as written."
            )
        factor = global_batch_size / tuned
        if not decoupled:
            rule = optimizer_cfg.lr_scaling
            factor *= batch_size_factor(tuned, rule) / batch_size_factor(global_batch_size, rule)
        if math.isclose(factor, 1.0, rel_tol=1e-12):
            factor = 1.0  # the linear rule's B/T x T/B, exactly as written
    return WeightDecayPlan(optimizer_cfg.weight_decay, tuned, global_batch_size, decoupled, factor)


def base_lr_for(lr: float, global_batch_size: int, rule: str) -> float:
    """The per-256 ``optimizer.base_lr`` that the batch-size rule turns into the applied ``lr`` (the inverse)."""
    return lr / batch_size_factor(global_batch_size, rule)


def applied_settings_comment(config: DictConfig) -> str:
    """The LR and weight decay the run applies at its batch, as YAML comments for ``--print-config`` (derived
    values, not recipe keys: the recipe keeps the per-256 LR and the tuned weight decay)."""
    lines = [
        scale_learning_rate(
            config.optimizer.base_lr, config.global_batch_size, config.optimizer.lr_scaling
        ).describe(),
        scale_weight_decay(config.optimizer, config.global_batch_size).describe(),
    ]
    header = f"# applied at global_batch_size={config.global_batch_size} (derived when the run is built):\n"
    return header + "".join(f"#   {line}\n" for line in lines)


# torchvision's normalization classes (torchvision/ops/_utils.py split_normalization_params).
NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)


def parameter_weight_decays(
    model: torch.nn.Module, optimizer_cfg: DictConfig, factor: float = 1.0
) -> dict[str, float]:
    """Each trainable parameter's weight decay by name, under the recipe's three exclusion rules, each decay
    times ``factor`` (``WeightDecayPlan.factor``: the batch rescaling).

    ``exclude_bn_and_bias_from_weight_decay``: every 1-D parameter (BatchNorm weights and biases, all biases) at 0,
    timm's and mmpretrain's rule (ResNet strikes back). ``norm_weight_decay``: the weights and biases of
    normalization layers only at that value, biases elsewhere decayed (torchvision's references, V2 recipe).
    ``no_weight_decay_names``: names containing a listed string at 0 (FFCV's "bn", which leaves torchvision's
    ``downsample.1`` BatchNorm and ``fc.bias`` decayed, as FFCV's code does).
    """
    norm_parameters = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, NORM_LAYERS)
        for parameter in module.parameters(recurse=False)
    }
    decays = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = optimizer_cfg.weight_decay
        if optimizer_cfg.norm_weight_decay is not None and id(parameter) in norm_parameters:
            decay = optimizer_cfg.norm_weight_decay
        if optimizer_cfg.exclude_bn_and_bias_from_weight_decay and parameter.ndim <= 1:
            decay = 0.0
        if any(part in name for part in optimizer_cfg.no_weight_decay_names):
            decay = 0.0
        decays[name] = float(decay) * factor
    return decays


def parameter_groups(model: torch.nn.Module, optimizer_cfg: DictConfig, decay: WeightDecayPlan) -> list[dict]:
    """One optimizer group per distinct weight decay (``parameter_weight_decays``), the recipe's first."""
    parameters = dict(model.named_parameters())
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, value in parameter_weight_decays(model, optimizer_cfg, decay.factor).items():
        groups.setdefault(value, []).append(parameters[name])
    ordered = sorted(groups, key=lambda value: value != decay.applied)
    return [{"params": groups[value], "weight_decay": value} for value in ordered]


class LARS(torch.optim.Optimizer):
    """MoCo v3's LARS: SGD momentum on a per-tensor trust-scaled update, with 1-D parameters left plain.

    As facebookresearch/moco-v3 ``moco/optimizer.py`` lines 10-43 (commit c349e6e): for a parameter with
    ``ndim > 1`` the update is ``dp = grad + weight_decay * p`` scaled by the trust ratio
    ``trust_coefficient * ||p|| / ||dp||`` (1 where either norm is 0); BatchNorm weights and biases (1-D) take the
    plain gradient, with neither weight decay nor trust scaling, whatever their group's ``weight_decay``. Then
    ``mu = momentum * mu + dp`` and ``p -= lr * mu``. The weight decay is coupled (inside the trust-scaled update),
    unlike Composer's decoupled optimizers, and nothing reads ``initial_lr``. ``main_moco.py`` lines 224-227 build
    it over ``model.parameters()`` with the linear per-256 LR of line 190, and its schedule (lines 420-428) sets
    every group's ``lr``, which Composer's schedulers do here.

    ``step`` takes Composer's ``closure`` (the official one takes none): Composer's Trainer passes one unless
    precision is amp_fp16 (composer/trainer/trainer.py:2684 and ``_use_closures`` at :3641), and
    ``torch.distributed.checkpoint``'s state-dict helpers call ``step(closure=None)`` on a fresh optimizer
    (torch/distributed/checkpoint/state_dict.py:644).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LARS step on every parameter that has a gradient; returns the closure's loss if given one."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                update = parameter.grad
                if parameter.ndim > 1:
                    update = update.add(parameter, alpha=group["weight_decay"])
                    parameter_norm = torch.linalg.vector_norm(parameter)
                    update_norm = torch.linalg.vector_norm(update)
                    trust_ratio = torch.where(
                        (parameter_norm > 0) & (update_norm > 0),
                        group["trust_coefficient"] * parameter_norm / update_norm,
                        torch.ones_like(parameter_norm),
                    )
                    update = update.mul(trust_ratio)
                state = self.state[parameter]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(parameter)
                state["mu"].mul_(group["momentum"]).add_(update)
                parameter.add_(state["mu"], alpha=-group["lr"])
        return loss


def build_optimizer(
    model: torch.nn.Module, optimizer_cfg: DictConfig, global_batch_size: int
) -> tuple[torch.optim.Optimizer, LearningRatePlan]:
    """Composer's decoupled SGDW or AdamW, or MoCo v3's LARS, at the batch-scaled learning rate."""
    plan = scale_learning_rate(optimizer_cfg.base_lr, global_batch_size, optimizer_cfg.lr_scaling)
    decay = scale_weight_decay(optimizer_cfg, global_batch_size)
    groups = parameter_groups(model, optimizer_cfg, decay)
    if optimizer_cfg.name != "lamb" and optimizer_cfg.max_grad_norm is not None:
        raise UsageError(
            f"'optimizer.max_grad_norm' is {optimizer_cfg.max_grad_norm}, but only lamb clips inside the optimizer "
            f"(optimizer.name={optimizer_cfg.name}); use algorithms.gradient_clipping instead."
        )
    if optimizer_cfg.name == "decoupled_sgdw":
        optimizer = DecoupledSGDW(
            groups,
            lr=plan.lr,
            momentum=optimizer_cfg.momentum,
            nesterov=optimizer_cfg.nesterov,
            weight_decay=decay.applied,
        )
    elif optimizer_cfg.name == "decoupled_adamw":
        optimizer = DecoupledAdamW(
            groups,
            lr=plan.lr,
            betas=tuple(optimizer_cfg.betas),
            eps=optimizer_cfg.eps,
            weight_decay=decay.applied,
        )
    elif optimizer_cfg.name == "lars":
        if optimizer_cfg.nesterov:
            raise UsageError(
                "'optimizer.nesterov' is true, but lars uses plain momentum (MoCo v3's LARS has no Nesterov "
                "step); set optimizer.nesterov=false, or use decoupled_sgdw."
            )
        if optimizer_cfg.trust_coefficient <= 0:
            raise UsageError(
                f"'optimizer.trust_coefficient' is {optimizer_cfg.trust_coefficient}; LARS needs a positive "
                "one (at 0 no weight matrix moves); MoCo v3 uses 0.001."
            )
        optimizer = LARS(
            groups,
            lr=plan.lr,
            momentum=optimizer_cfg.momentum,
            weight_decay=decay.applied,
            trust_coefficient=optimizer_cfg.trust_coefficient,
        )
    elif optimizer_cfg.name == "sgd":
        optimizer = torch.optim.SGD(
            groups,
            lr=plan.lr,
            momentum=optimizer_cfg.momentum,
            nesterov=optimizer_cfg.nesterov,
            weight_decay=decay.applied,
        )
    elif optimizer_cfg.name == "lamb":
        optimizer = lamb(groups, plan.lr, optimizer_cfg, decay.applied)
    else:
        raise UsageError(
            f"'optimizer.name' is '{optimizer_cfg.name}'; use decoupled_sgdw, decoupled_adamw, lars, sgd or lamb."
        )
    return optimizer, plan


def lamb(
    groups: list[dict], lr: float, optimizer_cfg: DictConfig, weight_decay: float
) -> torch.optim.Optimizer:
    """timm's LAMB (You et al. 2020), as ResNet strikes back trains with it (timm/optim/lamb.py, timm 1.0).

    Adam's moments with bias correction, the weight decay added to the update, then each tensor's step scaled by
    its trust ratio ||w|| / ||update||; before that the global gradient norm is clipped to ``max_grad_norm`` (timm's
    default 1.0, which ResNet strikes back keeps; null here: none). Composer has no LAMB; timm's is the one the
    recipe was tuned on.
    """
    from timm.optim import Lamb  # timm costs seconds to import; only LAMB runs need it

    if optimizer_cfg.max_grad_norm is not None and optimizer_cfg.max_grad_norm <= 0:
        raise UsageError(
            f"'optimizer.max_grad_norm' is {optimizer_cfg.max_grad_norm}; give a positive norm (timm's 1.0) "
            "or null for no clipping."
        )
    return Lamb(
        groups,
        lr=lr,
        betas=tuple(optimizer_cfg.betas),
        eps=optimizer_cfg.eps,
        weight_decay=weight_decay,
        max_grad_norm=optimizer_cfg.max_grad_norm,
    )


class PeakAnchoredOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """PyTorch's OneCycleLR whose param groups keep ``initial_lr`` at the peak LR, as Composer's schedules do.

    Composer's decoupled optimizers decay by ``weight_decay * lr / initial_lr`` (composer/optim/
    decoupled_weight_decay.py:121 and :276), taking ``initial_lr`` for the peak. OneCycleLR stores its starting LR,
    ``max_lr / div_factor``, under that same key (torch/optim/lr_scheduler.py:1948) and reads it back through its
    phase table, which would make the decay ``div_factor`` (25x) too strong at the peak. Here the starting LR lives
    under its own key, and ``initial_lr`` is the peak again, so the decay is ``weight_decay * lr / peak`` at every
    step. The schedule itself is unchanged, and the renamed table and keys are saved in checkpoints with it.
    """

    START_LR_KEY = "one_cycle_start_lr"

    def __init__(self, optimizer: torch.optim.Optimizer, **arguments: Any) -> None:
        super().__init__(optimizer, **arguments)
        for group in optimizer.param_groups:
            group[self.START_LR_KEY] = group["initial_lr"]
            group["initial_lr"] = group["max_lr"]
        for phase in self._schedule_phases:
            for key in ("start_lr", "end_lr"):
                if phase[key] == "initial_lr":
                    phase[key] = self.START_LR_KEY


def warmup_steps(
    scheduler_cfg: DictConfig, *, batches_per_epoch: int, global_batch_size: int, total_steps: int
) -> int:
    """The warmup in optimizer steps: one_cycle rises for ``pct_start`` of the run (its ``t_warmup`` does not
    apply), the warmup schedules for ``t_warmup``."""
    if scheduler_cfg.name == "one_cycle":
        return int(scheduler_cfg.pct_start * total_steps)
    return steps_in(
        scheduler_cfg.t_warmup,
        "scheduler.t_warmup",
        batches_per_epoch=batches_per_epoch,
        global_batch_size=global_batch_size,
        total_steps=total_steps,
    )


def _warm_up_from(scheduler: ComposerScheduler, start: float, t_warmup: str) -> ComposerScheduler:
    """Composer's warmup schedule, its linear warmup starting at ``start`` x the peak LR instead of at zero.

    Each of Composer's warmup schedules ramps through its ``warmup_scheduler``, a ``LinearScheduler`` from 0 to
    the level the main schedule starts at (composer/optim/scheduler.py); this one starts from ``start`` instead,
    as torchvision's LinearLR(start_factor=--lr-warmup-decay) and timm's --warmup-lr do.
    """
    if start:
        ramp = scheduler.warmup_scheduler  # type: ignore[attr-defined]
        scheduler.warmup_scheduler = LinearScheduler(  # type: ignore[attr-defined]
            alpha_i=start, alpha_f=ramp.alpha_f, t_max=t_warmup
        )
    return scheduler


def build_scheduler(
    scheduler_cfg: DictConfig,
    optimizer: torch.optim.Optimizer,
    max_duration: str,
    batches_per_epoch: int,
    global_batch_size: int,
) -> ComposerScheduler | torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule: Composer's warmup schedules, or PyTorch's OneCycleLR stepped every batch (with the
    recipe's momentum and Composer's weight-decay scaling: ``PeakAnchoredOneCycleLR``)."""
    # Composer's schedulers need a unit; a recipe's bare 0 means no warmup.
    warmup = "0ba" if is_zero(scheduler_cfg.t_warmup, "scheduler.t_warmup") else str(scheduler_cfg.t_warmup)
    if not 0 <= scheduler_cfg.warmup_start < 1:
        raise UsageError(
            f"scheduler.warmup_start={scheduler_cfg.warmup_start} must be a fraction of the peak LR in [0, 1): "
            "0 warms up from zero (Composer's), 0.01 is torchvision's --lr-warmup-decay."
        )
    if scheduler_cfg.name == "cosine_warmup":
        scheduler: ComposerScheduler = CosineAnnealingWithWarmupScheduler(
            t_warmup=warmup, alpha_f=scheduler_cfg.alpha_f
        )
        return _warm_up_from(scheduler, scheduler_cfg.warmup_start, warmup)
    if scheduler_cfg.name == "linear_warmup":
        scheduler = LinearWithWarmupScheduler(t_warmup=warmup, alpha_f=scheduler_cfg.alpha_f)
        return _warm_up_from(scheduler, scheduler_cfg.warmup_start, warmup)
    if scheduler_cfg.name == "constant_warmup":
        constant = ConstantWithWarmupScheduler(t_warmup=warmup)
        # Composer's constant schedule is a linear one from and to the same level (its .scheduler).
        _warm_up_from(constant.scheduler, scheduler_cfg.warmup_start, warmup)
        return constant
    if scheduler_cfg.name == "one_cycle":
        return PeakAnchoredOneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=run_steps(
                max_duration, batches_per_epoch=batches_per_epoch, global_batch_size=global_batch_size
            ),
            pct_start=scheduler_cfg.pct_start,
            div_factor=scheduler_cfg.div_factor,
            final_div_factor=scheduler_cfg.final_div_factor,
            # The recipe's optimizer.momentum (or betas) holds at every step, as under the other schedules.
            cycle_momentum=False,
        )
    raise UsageError(
        f"'scheduler.name' is '{scheduler_cfg.name}'; use cosine_warmup, linear_warmup, constant_warmup "
        "or one_cycle."
    )
