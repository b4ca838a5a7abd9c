"""LR scaling from the per-256 base, parameter groups, optimizers and schedules."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torchvision
from composer import Callback, State, Trainer
from composer.loggers import Logger
from composer.models import ComposerClassifier
from composer.optim import CosineAnnealingWithWarmupScheduler, DecoupledAdamW, DecoupledSGDW
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from recipes.errors import UsageError
from recipes.schema import OptimizerConfig, SchedulerConfig
from tools.planning import lr_at
from training.optimization import build_optimizer, build_scheduler, scale_learning_rate, scale_weight_decay


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


def decay_by_name(optimizer: torch.optim.Optimizer, net: torch.nn.Module) -> dict[str, float]:
    names = {id(p): name for name, p in net.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize(
    ("rule", "undecayed"),
    [
        # ResNet strikes back (timm, mmpretrain): every 1-D parameter, fc.bias included.
        (
            {"exclude_bn_and_bias_from_weight_decay": True},
            lambda n: "bn" in n or "downsample.1" in n or n == "fc.bias",
        ),
        # torchvision's --norm-weight-decay 0: BatchNorm only (downsample.1 included), fc.bias decayed.
        ({"norm_weight_decay": 0.0}, lambda n: "bn" in n or "downsample.1" in n),
        # FFCV: names containing "bn", so downsample.1 (a BatchNorm) and fc.bias keep their decay.
        ({"no_weight_decay_names": ["bn"]}, lambda n: "bn" in n),
    ],
)
def test_weight_decay_rules_of_the_reference_recipes_on_resnet50(rule: dict, undecayed) -> None:
    net = torchvision.models.resnet50()
    optimizer, _ = build_optimizer(net, optimizer_cfg(name="sgd", weight_decay=1e-4, **rule), 256)
    decays = decay_by_name(optimizer, net)
    assert len(decays) == 161 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    zero = {name for name, decay in decays.items() if decay == 0.0}
    assert zero == {name for name in decays if undecayed(name)}
    assert ("fc.bias" in zero) == ("exclude_bn_and_bias_from_weight_decay" in rule)
    assert ("layer1.0.downsample.1.weight" in zero) == ("no_weight_decay_names" not in rule)
    assert len(zero) == {"exclude_bn_and_bias_from_weight_decay": 107, "norm_weight_decay": 106}.get(
        next(iter(rule)), 98
    )


def test_sgd_couples_weight_decay_into_the_momentum_as_torch_does() -> None:
    """optimizer.name=sgd is torch.optim.SGD: the decay enters the gradient (and the momentum buffer), so after
    two steps on a zero gradient a weight has moved by lr*wd*w*(1 + (1 + momentum)), not decoupled SGDW's."""
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    optimizer, _ = build_optimizer(net, optimizer_cfg(name="sgd", base_lr=0.1, weight_decay=0.1), 256)
    assert type(optimizer) is torch.optim.SGD
    for _ in range(2):
        net.weight.grad = torch.zeros_like(net.weight)
        optimizer.step()
    first = 1 - 0.1 * 0.1
    assert net.weight.item() == pytest.approx(first - 0.1 * (0.1 * first + 0.9 * 0.1 * 1.0))


def test_lamb_is_timms_with_its_gradient_clipping() -> None:
    """optimizer.name=lamb steps exactly as timm's Lamb does, clipping the global gradient norm first."""
    from timm.optim import Lamb

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    config = optimizer_cfg(name="lamb", base_lr=1e-3, weight_decay=0.02, eps=1e-6, max_grad_norm=1.0)
    optimizer, _ = build_optimizer(ours, config, 2048)
    assert isinstance(optimizer, Lamb) and optimizer.param_groups[0]["lr"] == pytest.approx(8e-3)
    reference = Lamb(theirs.parameters(), lr=8e-3, weight_decay=0.02, eps=1e-6, max_grad_norm=1.0)
    unclipped, _ = build_optimizer(copy.deepcopy(ours), optimizer_cfg(name="lamb", base_lr=1e-3), 2048)
    for step in range(3):
        for model in (ours, theirs):
            model.weight.grad = torch.full_like(model.weight, 10.0 * (step + 1))  # norm far above 1
            model.bias.grad = torch.ones_like(model.bias)
        optimizer.step()
        reference.step()
    assert torch.allclose(ours.weight, theirs.weight, atol=1e-7)
    assert unclipped.defaults["max_grad_norm"] is None
    with pytest.raises(UsageError, match=r"optimizer.max_grad_norm.*only lamb clips.*gradient_clipping"):
        build_optimizer(small_net(), optimizer_cfg(max_grad_norm=1.0), 256)


def test_warmup_cosine_scheduler() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"t_warmup": "2ep", "alpha_f": 0.1})
    optimizer, _ = build_optimizer(small_net(), optimizer_cfg(), 256)
    scheduler = build_scheduler(cfg, optimizer, "10ep", batches_per_epoch=5, global_batch_size=256)
    assert isinstance(scheduler, CosineAnnealingWithWarmupScheduler)
    assert scheduler.alpha_f == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["cosine_warmup", "linear_warmup", "constant_warmup"])
def test_warmup_starts_at_warmup_start_times_the_peak_and_rises_linearly(name: str) -> None:
    """torchvision's LinearLR(start_factor=0.01) and timm's warmup-lr: the first step's LR is the fraction of
    the peak, the ramp is linear to the peak at the end of warmup, and the main schedule is Composer's as before."""
    run = OmegaConf.create({"max_duration": "10ep", "global_batch_size": 256})
    curves = {}
    for start in (0.0, 0.01):
        cfg = OmegaConf.merge(
            OmegaConf.structured(SchedulerConfig), {"name": name, "t_warmup": "2ep", "warmup_start": start}
        )
        optimizer, _ = build_optimizer(small_net(), optimizer_cfg(), 256)
        scheduler = build_scheduler(cfg, optimizer, "10ep", batches_per_epoch=5, global_batch_size=256)
        curves[start] = [lr_at(scheduler, 1.0, step, run, 5) for step in range(50)]
    warmed = curves[0.01]
    assert warmed[0] == pytest.approx(0.01) and curves[0.0][0] == 0.0
    assert warmed[5] == pytest.approx(0.01 + 0.99 * 5 / 10)  # linear over the 10 warmup steps
    assert warmed[10:] == pytest.approx(curves[0.0][10:])


def test_warmup_start_outside_zero_to_one_is_refused() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"warmup_start": 1.0})
    optimizer, _ = build_optimizer(small_net(), optimizer_cfg(), 256)
    with pytest.raises(UsageError, match=r"scheduler.warmup_start=1.0 must be a fraction of the peak LR"):
        build_scheduler(cfg, optimizer, "10ep", batches_per_epoch=5, global_batch_size=256)


def test_one_cycle_peaks_at_scaled_lr_and_ends_low() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"name": "one_cycle", "pct_start": 0.3})
    optimizer, plan = build_optimizer(small_net(), optimizer_cfg(base_lr=0.1), 512)
    scheduler = build_scheduler(cfg, optimizer, "4ep", batches_per_epoch=25, global_batch_size=512)
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


def test_one_cycle_needs_a_run_length_in_steps() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"name": "one_cycle"})
    optimizer, _ = build_optimizer(small_net(), optimizer_cfg(), 256)
    with pytest.raises(UsageError, match="max_duration"):
        build_scheduler(cfg, optimizer, "1dur", batches_per_epoch=5, global_batch_size=256)
    in_samples = build_scheduler(cfg, optimizer, "2560sp", batches_per_epoch=5, global_batch_size=256)
    assert in_samples.total_steps == 10


# one_cycle under Composer's decoupled optimizers, measured on the weights a real loss.backward() moves.
ONE_CYCLE_STEPS = 12


def one_cycle_training(optimizer_cfg_, steps: int = ONE_CYCLE_STEPS):
    """A float64 net trained on a fixed batch under one_cycle, with a twin that takes the same steps without
    weight decay; yields, per step, the LR, the weights before and after, their gradient, and the twin's."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 5)).double()
    twin = copy.deepcopy(net)
    optimizer, plan = build_optimizer(net, optimizer_cfg_, 256)
    twin_optimizer, _ = build_optimizer(twin, OmegaConf.merge(optimizer_cfg_, {"weight_decay": 0.0}), 256)
    cfg = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"name": "one_cycle", "pct_start": 0.5})
    scheduler = build_scheduler(cfg, optimizer, f"{steps}ba", batches_per_epoch=steps, global_batch_size=256)
    images = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    labels = torch.arange(8) % 5
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        weight = net[2].weight
        # The twin starts from the same weights with the same gradient and hyperparameters; only the decay differs.
        with torch.no_grad():
            for mine, theirs in zip(net.parameters(), twin.parameters(), strict=True):
                theirs.copy_(mine)
                theirs.grad = mine.grad.clone()
        for group, twin_group in zip(optimizer.param_groups, twin_optimizer.param_groups, strict=True):
            twin_group.update({key: group[key] for key in ("lr", "momentum", "betas") if key in group})
        lr, before, gradient = optimizer.param_groups[0]["lr"], weight.detach().clone(), weight.grad.clone()
        optimizer.step()
        twin_optimizer.step()
        scheduler.step()
        yield plan.lr, lr, before, weight.detach().clone(), gradient, twin[2].weight.detach().clone()


@pytest.mark.parametrize("name", ["decoupled_sgdw", "decoupled_adamw"])
def test_one_cycle_decays_weights_by_weight_decay_times_lr_over_peak(name: str) -> None:
    """As under Composer's warmup schedules: at the peak LR a step shrinks the weights by weight_decay, at the
    start by weight_decay / div_factor (OneCycleLR's own initial_lr would make that 25x larger at the peak)."""
    weight_decay = 5.0e-4
    decays, expected = [], []
    for peak, lr, before, after, _, without_decay in one_cycle_training(
        optimizer_cfg(name=name, base_lr=0.1, weight_decay=weight_decay)
    ):
        # after = before * (1 - decay) - update and without_decay = before - update
        decays.append(float(((without_decay - after) * before).sum() / (before * before).sum()))
        expected.append(weight_decay * lr / peak)
    assert max(expected) == pytest.approx(weight_decay)  # the schedule reached its peak
    assert decays == pytest.approx(expected, rel=1e-6)


def test_one_cycle_keeps_the_recipes_momentum() -> None:
    """SGD's momentum buffer is recovered from the weight change (buffer = change / lr) and its ratio to the last
    one measured: the recipe's 0.875 at every step, not OneCycleLR's 0.85-0.95 cycle."""
    measured, previous = [], None
    for _, lr, before, after, gradient, _ in one_cycle_training(
        optimizer_cfg(name="decoupled_sgdw", momentum=0.875, weight_decay=0.0)
    ):
        buffer = (before - after) / lr  # buffer = momentum * previous buffer + gradient
        if previous is not None:
            measured.append(float(((buffer - gradient) * previous).sum() / (previous * previous).sum()))
        previous = buffer
    assert measured == pytest.approx([0.875] * (ONE_CYCLE_STEPS - 1), rel=1e-6)


# LARS, against MoCo v3's published algorithm (moco/optimizer.py) written out here on the same real gradients.
LARS_SETTINGS = {
    "name": "lars",
    "base_lr": 0.4,
    "momentum": 0.9,
    "weight_decay": 0.05,
    "trust_coefficient": 0.02,
}


def lars_net() -> torch.nn.Module:
    """Conv and BatchNorm as in a ResNet, plus a linear head: 2-D and 4-D weights, 1-D biases and BN affines."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 5),
    ).double()


def lars_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 3, 6, 6, dtype=torch.float64, generator=generator), torch.arange(8) % 5)
        for _ in range(steps)
    ]


def backward(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    for parameter in net.parameters():
        parameter.grad = None
    torch.nn.functional.cross_entropy(net(images), labels).backward()


def published_lars_step(
    parameter: torch.Tensor, gradient: torch.Tensor, mu: torch.Tensor, settings: dict, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """moco/optimizer.py's step for one tensor: decay and trust ratio on ndim > 1 only, then SGD momentum."""
    update = gradient
    if parameter.ndim > 1:
        update = gradient + settings["weight_decay"] * parameter
        parameter_norm, update_norm = float(parameter.norm()), float(update.norm())
        if parameter_norm > 0 and update_norm > 0:
            update = update * (settings["trust_coefficient"] * parameter_norm / update_norm)
    mu = settings["momentum"] * mu + update
    return parameter - lr * mu, mu


def test_lars_steps_as_moco_v3_publishes_it() -> None:
    """Four steps on real gradients: every tensor lands where the published algorithm puts it; weights take the
    trust-scaled, decayed step (its size trust_coefficient * lr * ||w|| at the first step, momentum aside) and
    BatchNorm and bias tensors plain momentum SGD, though the one parameter group carries weight decay."""
    net = lars_net()
    optimizer, plan = build_optimizer(net, optimizer_cfg(**LARS_SETTINGS), 512)
    assert plan.lr == pytest.approx(0.8)  # 0.4 per 256, linear rule, batch 512
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05]
    names = [name for name, _ in net.named_parameters()]
    reference = [p.detach().clone() for p in net.parameters()]
    buffers = [torch.zeros_like(p) for p in reference]
    for step, (images, labels) in enumerate(lars_batches(4)):
        backward(net, images, labels)
        before = [p.detach().clone() for p in net.parameters()]
        for index, parameter in enumerate(net.parameters()):
            reference[index], buffers[index] = published_lars_step(
                reference[index], parameter.grad, buffers[index], LARS_SETTINGS, plan.lr
            )
        if step == 0:
            plain = {name: before[i] - plan.lr * p.grad for i, (name, p) in enumerate(net.named_parameters())}
        optimizer.step()
        for name, parameter, expected in zip(names, net.parameters(), reference, strict=True):
            torch.testing.assert_close(parameter.detach(), expected, rtol=1e-12, atol=1e-12, msg=name)
        if step == 0:
            for name, parameter, start in zip(names, net.parameters(), before, strict=True):
                if parameter.ndim > 1:
                    moved = float((parameter - start).norm() / start.norm())
                    assert moved == pytest.approx(LARS_SETTINGS["trust_coefficient"] * plan.lr), name
                else:  # the plain SGD step: no decay, no trust ratio (to rounding: add_ with alpha may fuse)
                    torch.testing.assert_close(
                        parameter.detach(), plain[name], rtol=1e-12, atol=1e-12, msg=name
                    )
        # The reference is followed from the optimizer's own weights, so the gradients stay the same.
        with torch.no_grad():
            for parameter, expected in zip(net.parameters(), reference, strict=True):
                parameter.copy_(expected)


def test_lars_takes_the_unscaled_step_where_a_norm_is_zero() -> None:
    """A zero weight matrix moves by the plain gradient step (the trust ratio would be 0 and freeze it); a
    weight with a zero gradient and no decay stays put instead of turning NaN (||dp|| = 0)."""
    net = lars_net()
    unused = torch.nn.Parameter(torch.ones(3, 3, dtype=torch.float64))
    net.register_parameter("unused", unused)
    with torch.no_grad():
        net[4].weight.zero_()
    optimizer, plan = build_optimizer(net, optimizer_cfg(**{**LARS_SETTINGS, "weight_decay": 0.0}), 256)
    images, labels = lars_batches(1)[0]
    for parameter in net.parameters():
        parameter.grad = None
    loss = torch.nn.functional.cross_entropy(net(images), labels) + 0.0 * unused.sum()
    loss.backward()
    expected_head = net[4].weight.detach() - plan.lr * net[4].weight.grad
    assert float(net[4].weight.grad.norm()) > 0 and float(unused.grad.norm()) == 0
    optimizer.step()
    torch.testing.assert_close(net[4].weight.detach(), expected_head, rtol=1e-12, atol=1e-12)
    assert torch.equal(unused.detach(), torch.ones(3, 3, dtype=torch.float64))


def test_lars_resumes_identically_from_its_state_dict() -> None:
    """Three steps, the optimizer and weights saved through torch.save, a fresh net and optimizer loaded: the
    next three steps match the uninterrupted run exactly (the momentum buffers came back), and a fresh
    optimizer without the state would not."""
    batches = lars_batches(6)
    settings = optimizer_cfg(**LARS_SETTINGS)
    net = lars_net()
    optimizer, _ = build_optimizer(net, settings, 256)
    for images, labels in batches[:3]:
        backward(net, images, labels)
        optimizer.step()
    saved = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)

    resumed, forgetful = lars_net(), lars_net()
    resumed.load_state_dict(checkpoint["model"])
    forgetful.load_state_dict(checkpoint["model"])
    resumed_optimizer, _ = build_optimizer(resumed, settings, 256)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    forgetful_optimizer, _ = build_optimizer(forgetful, settings, 256)
    for images, labels in batches[3:]:
        for model, opt in ((net, optimizer), (resumed, resumed_optimizer), (forgetful, forgetful_optimizer)):
            backward(model, images, labels)
            opt.step()
    for name, parameter in net.named_parameters():
        assert torch.equal(parameter, resumed.get_parameter(name)), name
    assert not torch.equal(net[0].weight, forgetful[0].weight)


class StepProbe(Callback):
    """Each batch's LR, weights and gradients just before Composer's optimizer step, and the weights after."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._before: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def after_backward(self, state: State, logger: Logger) -> None:
        conv, bias = state.model.module[0].weight, state.model.module[1].bias
        self._before = (conv.detach().clone(), bias.detach().clone(), bias.grad.clone())
        self.lrs.append(state.optimizers[0].param_groups[0]["lr"])

    def batch_end(self, state: State, logger: Logger) -> None:
        assert self._before is not None
        conv_before, bias_before, bias_gradient = self._before
        network = state.model.module
        self.steps.append(
            (conv_before, network[0].weight.detach().clone(), bias_before - network[1].bias, bias_gradient)
        )


def test_composer_schedule_sets_the_lr_lars_applies() -> None:
    """Through Composer's Trainer (which calls step(closure=...)) under the recipe's cosine_warmup over 4
    batches, 2 of them warmup: the schedule reads 0, half the peak, the peak, half the peak, and Composer 0.32.1
    applies it one batch late (trainer.py:2490 steps the scheduler before :2500 advances the timestamp), so the
    batches run at 0, 0, half the peak, the peak. Measured from the weights: a BN bias moves by -LR x its
    gradient (momentum 0), a conv weight by trust_coefficient x LR x its norm."""
    network = lars_net().float()
    model = ComposerClassifier(network, num_classes=5)
    settings = {**LARS_SETTINGS, "momentum": 0.0}
    optimizer, plan = build_optimizer(network, optimizer_cfg(**settings), 256)
    schedule = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), {"t_warmup": "2ba", "alpha_f": 0.0})
    scheduler = build_scheduler(schedule, optimizer, "4ba", batches_per_epoch=4, global_batch_size=256)
    images, labels = (torch.cat(parts) for parts in zip(*lars_batches(4), strict=True))
    probe = StepProbe()
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(TensorDataset(images.float(), labels), batch_size=8),
        max_duration="4ba",
        optimizers=optimizer,
        schedulers=scheduler,
        callbacks=[probe],
        device="cpu",
        progress_bar=False,
        seed=0,
    )
    trainer.fit()
    trainer.close()
    bias_lrs = [
        float((moved * gradient).sum() / (gradient * gradient).sum()) for *_, moved, gradient in probe.steps
    ]
    conv_steps = [float((after - before).norm() / before.norm()) for before, after, *_ in probe.steps]
    expected = [0.0, 0.0, 0.5 * plan.lr, plan.lr]
    assert probe.lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert bias_lrs == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert conv_steps == pytest.approx(
        [settings["trust_coefficient"] * lr for lr in expected], rel=1e-4, abs=1e-7
    )


def test_lars_refuses_nesterov_and_a_zero_trust_coefficient() -> None:
    with pytest.raises(UsageError, match=r"optimizer\.nesterov"):
        build_optimizer(small_net(), optimizer_cfg(name="lars", nesterov=True), 256)
    with pytest.raises(UsageError, match=r"optimizer\.trust_coefficient"):
        build_optimizer(small_net(), optimizer_cfg(name="lars", trust_coefficient=0.0), 256)


def left_after_an_epoch(optimizer_settings: dict, batch: int, images: int = 4096) -> float:
    """What an epoch of ``images`` at ``batch`` leaves of a weight of 1 through weight decay alone: zero
    gradients, no momentum, the peak LR held (so Composer's decay factor lr / initial_lr is 1)."""
    net = torch.nn.Linear(4, 4, bias=False)
    torch.nn.init.ones_(net.weight)
    optimizer, _ = build_optimizer(net, optimizer_cfg(momentum=0.0, **optimizer_settings), batch)
    for _ in range(images // batch):
        net.weight.grad = torch.zeros_like(net.weight)
        optimizer.step()
    return net.weight.mean().item()


@pytest.mark.parametrize(
    ("name", "rule"),
    [("decoupled_sgdw", "linear"), ("decoupled_adamw", "linear"), ("sgd", "linear"), ("sgd", "sqrt")],
)
def test_an_epoch_decays_the_weights_as_at_the_tuned_batch(name: str, rule: str) -> None:
    """weight_decay tuned at 512: an epoch at batch 128 (four times the steps) shrinks the weights as much."""
    settings = {"name": name, "lr_scaling": rule, "weight_decay": 1e-3, "weight_decay_batch": 512}
    tuned, small = left_after_an_epoch(settings, 512), left_after_an_epoch(settings, 128)
    assert tuned < 1 - 1e-4
    assert 1 - small == pytest.approx(1 - tuned, rel=1e-3)


def test_composers_decoupled_decay_applied_as_written_grows_with_the_steps_per_epoch() -> None:
    """The departure weight_decay_batch corrects (Mosaic's 5e-4 per step at 2048 ran at 1024 and 256): Composer's
    DecoupledSGDW decays a fixed fraction per step, so an epoch of four times the steps decays as much as four
    epochs at the larger batch; a coupled SGD under the linear rule does not need the correction."""
    written = {"name": "decoupled_sgdw", "weight_decay": 1e-3}
    assert left_after_an_epoch(written, 128) == pytest.approx(
        left_after_an_epoch(written, 512) ** 4, rel=1e-6
    )
    coupled = {"name": "sgd", "weight_decay": 1e-3}
    assert left_after_an_epoch(coupled, 128) == pytest.approx(left_after_an_epoch(coupled, 512), rel=1e-6)


def test_every_group_is_rescaled_and_the_plan_says_how() -> None:
    """The norm layers' own decay is rescaled with the rest (torchvision's 0.0 stays 0); the plan names both."""
    cfg = optimizer_cfg(weight_decay=4e-4, norm_weight_decay=2e-4, weight_decay_batch=1024)
    optimizer, _ = build_optimizer(small_net(), cfg, 256)
    assert [group["weight_decay"] for group in optimizer.param_groups] == pytest.approx([1e-4, 5e-5])
    plan = scale_weight_decay(cfg, 256)
    assert plan.applied == pytest.approx(1e-4)
    assert plan.describe().startswith("weight decay 0.0001 = 0.0004 tuned at batch 1024 x 0.25")
    assert "unset" in scale_weight_decay(optimizer_cfg(), 256).describe()
    with pytest.raises(UsageError, match=r"'optimizer\.weight_decay_batch' is 0"):
        scale_weight_decay(optimizer_cfg(weight_decay_batch=0), 256)
