"""MoCo v3 as facebookresearch/moco-v3 builds it: the MLPs, the torchvision backbone, the momentum encoder and its
schedule through a real Trainer, the loss against the published formula, the queue, and 2 ranks against 1.

Structure tests use resnet18 at 32 px with narrow MLPs for speed; the torchvision load test is resnet50 with the
official widths.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from composer import Trainer
from composer.core import Callback, State
from composer.loggers import InMemoryLogger, Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.momentum_encoder import MomentumEncoder
from model import MocoV3, build_moco_model, moco_backbone_state, moco_initial_loss
from recipes.schema import LossReduction, MocoConfig, ModelConfig

SMALL = {"projector_hidden_dim": 64, "predictor_hidden_dim": 64, "output_dim": 32}
# The two-rank test's batch (4 images a rank under composer -n 2) and queue.
GLOBAL_BATCH, QUEUE = 8, 8


def small_model(seed: int = 0, name: str = "resnet18", **moco: object) -> MocoV3:
    torch.manual_seed(seed)
    return build_moco_model(ModelConfig(name=name), MocoConfig(**{**SMALL, **moco}), device="cpu")


def two_view_batch(batch_size: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 2, 3, 32, 32, generator=generator), torch.zeros(
        batch_size, dtype=torch.long
    )


def reference_term(
    query: Tensor, keys: Tensor, temperature: float, rank: int, negatives: Tensor | None
) -> Tensor:
    """The published InfoNCE term written out: -mean_i log(exp(q_i.k_+/T) / sum_j exp(q_i.k_j/T)) x 2T."""
    query = query / query.norm(dim=1, keepdim=True)
    candidates = keys if negatives is None else torch.cat([keys, negatives])
    similarities = torch.exp(query @ candidates.T / temperature)
    positives = similarities[torch.arange(len(query)), torch.arange(len(query)) + len(query) * rank]
    return -(positives / similarities.sum(dim=1)).log().mean() * 2 * temperature


def test_projector_and_predictor_are_the_official_mlps() -> None:
    model = small_model()
    images, targets = two_view_batch(4)
    outputs = model((images, targets))
    described = [
        (type(layer).__name__, getattr(layer, "bias", None) is not None, getattr(layer, "affine", None))
        for layer in [*model.base_encoder.fc, *model.predictor]
    ]
    assert described == [
        ("Linear", False, None), ("BatchNorm1d", True, True), ("ReLU", False, None),
        ("Linear", False, None), ("BatchNorm1d", False, False),
        ("Linear", False, None), ("BatchNorm1d", True, True), ("ReLU", False, None), ("Linear", False, None),
    ]  # fmt: skip
    assert [layer.weight.shape for layer in model.base_encoder.fc if isinstance(layer, nn.Linear)] == [
        (64, 512),
        (32, 64),
    ]
    assert model.momentum_encoder.fc[0].weight.shape == (64, 512)
    assert not hasattr(model.momentum_encoder, "predictor")
    assert outputs.query1.shape == outputs.keys2.shape == (4, 32)
    torch.testing.assert_close(outputs.keys1.norm(dim=1), torch.ones(4))


def test_backbone_loads_strictly_into_torchvision_resnet50(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two processes on GPUs make the builder convert to SyncBatchNorm, whose keys must still load; on CPUs
    # (where PyTorch's SyncBatchNorm cannot run) it keeps BatchNorm.
    monkeypatch.setenv("WORLD_SIZE", "2")
    on_cpu = build_moco_model(ModelConfig(name="resnet18"), MocoConfig(**SMALL), device="cpu")
    assert not any(isinstance(module, nn.SyncBatchNorm) for module in on_cpu.modules())
    model = build_moco_model(ModelConfig(), MocoConfig(), device="gpu")
    assert isinstance(model.base_encoder.bn1, nn.SyncBatchNorm)
    assert isinstance(model.momentum_encoder.fc[-1], nn.SyncBatchNorm)
    assert [model.base_encoder.fc[0].in_features, model.base_encoder.fc[0].out_features] == [2048, 4096]
    assert [model.predictor[0].in_features, model.predictor[-1].out_features] == [256, 256]
    backbone = moco_backbone_state(model.state_dict())
    resnet = torchvision.models.resnet50()
    result = resnet.load_state_dict(backbone, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    torch.testing.assert_close(resnet.layer1[0].conv1.weight, model.base_encoder.layer1[0].conv1.weight)
    # The recipe's zero_init_residual rule applied to the backbone.
    assert resnet.layer4[2].bn3.weight.abs().sum() == 0


def test_momentum_encoder_gets_no_gradient_and_moves_by_one_minus_m() -> None:
    model = small_model()
    for base, momentum in zip(
        model.base_encoder.parameters(), model.momentum_encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(base, momentum, rtol=0, atol=0)
    batch = two_view_batch(4)
    model.loss(model(batch), batch).backward()
    assert all(parameter.grad is None for parameter in model.momentum_encoder.parameters())
    # Out of the optimizer's and DDP's trainable set too, as the official requires_grad = False.
    assert not any(parameter.requires_grad for parameter in model.momentum_encoder.parameters())
    assert model.base_encoder.conv1.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for parameter in model.momentum_encoder.parameters():
            parameter.normal_()
    before = [parameter.clone() for parameter in model.momentum_encoder.parameters()]
    model.update_momentum_encoder(0.9)
    for old, new, base in zip(
        before, model.momentum_encoder.parameters(), model.base_encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(new - old, 0.1 * (base - old), rtol=1e-5, atol=1e-6)


class QueuePointerAtForward(Callback):
    """Records the queue pointer each microbatch's forward sees."""

    def __init__(self) -> None:
        self.pointers: list[int] = []

    def before_forward(self, state: State, logger: Logger) -> None:
        self.pointers.append(int(state.model.queue_pointer))


def test_momentum_follows_the_half_cosine_once_per_step_in_a_trainer() -> None:
    """4 steps (2 epochs of 2 batches, 2 microbatches each) at LR 0, the momentum encoder zeroed first: after
    steps with momenta m_0..m_3 it is q * (1 - m_0 m_1 m_2 m_3), only if it moved once per step; and both
    microbatches of a step see the queue as the step began."""
    start = 0.9
    model = small_model(momentum=start, queue_size=12)
    with torch.no_grad():
        for parameter in model.momentum_encoder.parameters():
            parameter.zero_()
    base = [parameter.clone() for parameter in model.base_encoder.parameters()]
    images, targets = two_view_batch(8)
    logger = InMemoryLogger()
    pointers = QueuePointerAtForward()
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(TensorDataset(images, targets), batch_size=4),
        optimizers=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0),
        max_duration="2ep",
        device_train_microbatch_size=2,
        callbacks=[MomentumEncoder(start, global_batch_size=4), pointers],
        loggers=[logger],
        device="cpu",
        progress_bar=False,
        log_to_console=False,
    )
    trainer.fit()
    momenta = [value for _, value in logger.data["moco/momentum"]]
    expected = [1 - 0.5 * (1 + math.cos(math.pi * step / 4)) * (1 - start) for step in range(4)]
    assert momenta == pytest.approx(expected)
    assert momenta[0] == pytest.approx(start) and momenta[2] == pytest.approx(
        (1 + start) / 2
    )  # start, middle
    assert expected[-1] < 1 and 1 - 0.5 * (1 + math.cos(math.pi)) * (1 - start) == 1  # the end, never reached
    kept = 1 - math.prod(momenta)
    for parameter, initial in zip(model.momentum_encoder.parameters(), base, strict=True):
        torch.testing.assert_close(parameter, initial * kept, rtol=1e-5, atol=1e-6)
    # Each step enqueues its 2 views x 4 keys into the 12-key queue once, after both microbatches.
    assert pointers.pointers == [0, 0, 8, 8, 4, 4, 0, 0]
    assert int(model.queue_pointer) == 4 * 8 % 12


def test_initial_loss_is_near_the_prediction_and_sum_is_twice_mean() -> None:
    batch = two_view_batch(32)
    summed = small_model(seed=3, output_dim=256, queue_size=64)
    averaged = small_model(seed=3, output_dim=256, queue_size=64, loss_reduction=LossReduction.mean)
    loss_sum = summed.loss(summed(batch), batch)
    loss_mean = averaged.loss(averaged(batch), batch)
    torch.testing.assert_close(loss_sum, 2 * loss_mean)
    predicted = moco_initial_loss(32, 64, 1.0, LossReduction.sum)
    assert predicted == pytest.approx(4 * math.log(96))
    assert loss_sum.item() == pytest.approx(predicted, rel=0.02)


@pytest.mark.parametrize("queue_size", [0, 6])
def test_loss_is_the_published_infonce(queue_size: int) -> None:
    temperature = 0.5
    model = small_model(temperature=temperature, queue_size=queue_size)
    batch = two_view_batch(4)
    outputs = model(batch)
    view1, view2 = batch[0][:, 0], batch[0][:, 1]
    with torch.no_grad():
        query1 = model.predictor(model.base_encoder(view1))
        query2 = model.predictor(model.base_encoder(view2))
        keys1 = nn.functional.normalize(model.momentum_encoder(view1), dim=1)
        keys2 = nn.functional.normalize(model.momentum_encoder(view2), dim=1)
    negatives = model.queue if queue_size else None
    expected = reference_term(query1, keys2, temperature, 0, negatives) + reference_term(
        query2, keys1, temperature, 0, negatives
    )
    torch.testing.assert_close(model.loss(outputs, batch), expected, rtol=1e-5, atol=1e-5)
    if queue_size:
        without = reference_term(query1, keys2, temperature, 0, None) + reference_term(
            query2, keys1, temperature, 0, None
        )
        assert (model.loss(outputs, batch) - without).abs() > 0.1


def test_queue_takes_each_steps_keys_and_rolls() -> None:
    model = small_model(queue_size=6)
    first, second = two_view_batch(2, seed=1), two_view_batch(2, seed=2)
    start = model.queue.clone()
    outputs = model(first)
    model.enqueue_step_keys()
    torch.testing.assert_close(model.queue[:4], torch.cat([outputs.keys1, outputs.keys2]))
    torch.testing.assert_close(model.queue[4:], start[4:])
    assert int(model.queue_pointer) == 4
    later = model(second)
    model.enqueue_step_keys()
    new_keys = torch.cat([later.keys1, later.keys2])
    torch.testing.assert_close(model.queue[[4, 5, 0, 1]], new_keys)
    torch.testing.assert_close(model.queue[2:4], outputs.keys2)
    assert int(model.queue_pointer) == 2
    assert "queue" in model.state_dict() and "queue_pointer" in model.state_dict()


def test_composer_n_2_gathers_keys_and_computes_the_one_rank_loss_and_gradient(two_rank_checks: Path) -> None:
    """``composer -n 2`` (tests/moco_rank_step.py), BatchNorm in eval mode (the same statistics on a half and on
    the whole batch), the queue on: the mean of the ranks' losses and gradients (what DDP applies) equals one
    process's on all 8 images, and each rank's gathered keys are the whole batch's, in rank order."""
    model = small_model(queue_size=QUEUE).eval()
    batch = two_view_batch(GLOBAL_BATCH)
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    loss.backward()
    ranks = [torch.load(two_rank_checks / "moco" / f"rank{rank}.pt") for rank in range(2)]
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    for rank in ranks:
        torch.testing.assert_close(rank["keys1"], outputs.keys1, rtol=1e-5, atol=1e-6)
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            averaged = (ranks[0]["grads"][name] + ranks[1]["grads"][name]) / 2
            torch.testing.assert_close(averaged, parameter.grad, rtol=1e-4, atol=1e-6)
