"""Tests for model.py: the ResNet classifier a recipe builds, its heads, initialisation and metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import Tensor, nn

import model
from recipes.errors import UsageError
from recipes.schema import ModelConfig

NUM_CLASSES = 10
BCE = "binary_cross_entropy"


def images(seed: int = 0) -> Tensor:
    """A fixed tiny batch: resnet50 runs on 32x32 inputs, which keeps these tests fast on a CPU."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def eval_outputs(network: torch.nn.Module, inputs: Tensor) -> Tensor:
    with torch.no_grad():
        return network.eval()(inputs)


@pytest.mark.parametrize("head", ["fc", "conv1x1"])
def test_build_model_gives_logits_per_class(head: str) -> None:
    classifier = model.build_model(ModelConfig(head=head), NUM_CLASSES)
    assert eval_outputs(classifier.module, images()).shape == (2, NUM_CLASSES)


def test_conv1x1_head_keeps_torchvision_backbone_keys() -> None:
    conv_head = model.build_model(ModelConfig(head="conv1x1"), NUM_CLASSES).module.state_dict()
    torchvision_keys = torchvision.models.resnet50(num_classes=NUM_CLASSES).state_dict().keys()
    assert conv_head.keys() == torchvision_keys
    assert conv_head["fc.weight"].shape == (NUM_CLASSES, 2048, 1, 1)


def test_zero_init_residual_zeroes_last_batchnorm_of_each_block() -> None:
    network = model.build_model(ModelConfig(zero_init_residual=True), NUM_CLASSES).module
    blocks = [m for m in network.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in blocks)
    untouched = model.build_model(ModelConfig(zero_init_residual=False), NUM_CLASSES).module
    assert torch.count_nonzero(untouched.layer1[0].bn3.weight) > 0


def test_metric_names_are_acc1_acc5_loss() -> None:
    classifier = model.build_model(ModelConfig(), NUM_CLASSES)
    assert set(classifier.get_metrics(is_train=True)) == {"acc1"}
    assert set(classifier.get_metrics(is_train=False)) == {"acc1", "acc5", "loss"}


def test_accuracy_with_dense_targets_equals_accuracy_with_labels() -> None:
    """torchmetrics alone scores one-hot targets as per-element labels (a perfect model gets 0.9 with 10 classes)."""
    classifier = model.build_model(ModelConfig(), NUM_CLASSES)
    labels = torch.arange(8) % NUM_CLASSES
    outputs = torch.randn(8, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    outputs[:4] += 10 * torch.nn.functional.one_hot(labels[:4], NUM_CLASSES)  # half clearly right
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
    mixed = 0.75 * one_hot + 0.25 * one_hot.roll(1, dims=0)  # MixUp's targets
    scores = {}
    for name, targets in (("labels", labels), ("dense", mixed)):
        metrics = classifier.get_metrics(is_train=False)
        for metric in metrics.values():
            classifier.update_metric((None, targets), outputs, metric)
        scores[name] = {key: metric.compute().item() for key, metric in metrics.items() if key != "loss"}
    assert scores["dense"] == scores["labels"]
    assert scores["labels"]["acc1"] == pytest.approx(0.5, abs=0.13)


def test_num_classes_mismatch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"model.num_classes is 7 .* data has 10"):
        model.build_model(ModelConfig(num_classes=7), NUM_CLASSES)


def test_unknown_architecture_lists_known_ones() -> None:
    with pytest.raises(UsageError, match=r"resnet5000.*resnet50"):
        model.build_model(ModelConfig(name="resnet5000"), NUM_CLASSES)


# ---- initialisation ----


def same_weights(first: nn.Module, second: nn.Module) -> bool:
    """Every parameter and buffer equal, bit for bit."""
    one, two = first.state_dict(), second.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one)


@pytest.mark.parametrize("zero_init_residual", [True, False])
def test_default_init_is_torchvision_own_under_the_same_seed(zero_init_residual: bool) -> None:
    """init: torchvision and the cross-entropy loss leave the network exactly as torchvision builds it."""
    torch.manual_seed(0)
    built = model.build_model(ModelConfig(zero_init_residual=zero_init_residual), NUM_CLASSES).module
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(num_classes=NUM_CLASSES, zero_init_residual=zero_init_residual)
    assert same_weights(built, reference)


def mosaic_reference(num_classes: int, loss_name: str) -> nn.Module:
    """Mosaic's own ``build_composer_resnet`` network, their ``weight_init`` copied verbatim from
    mosaicml/examples@daddaeff, examples/benchmarks/resnet_imagenet/model.py."""
    model_ = torchvision.models.resnet.resnet50(num_classes=num_classes, groups=1, width_per_group=64)

    def weight_init(w: torch.nn.Module):
        if isinstance(w, torch.nn.Linear) or isinstance(w, torch.nn.Conv2d):  # noqa: SIM101 (as published)
            torch.nn.init.kaiming_normal_(w.weight)
        if isinstance(w, torch.nn.BatchNorm2d):
            w.weight.data = torch.rand(w.weight.data.shape)
            w.bias.data = torch.zeros_like(w.bias.data)
        if loss_name == "binary_cross_entropy" and isinstance(w, torch.nn.Linear):
            w.bias.data = torch.ones(w.bias.shape) * -torch.log(torch.tensor(w.bias.shape[0]))

    model_.apply(weight_init)
    return model_


@pytest.mark.parametrize("loss", ["cross_entropy", BCE])
def test_mosaic_init_is_mosaic_own_under_the_same_seed(loss: str) -> None:
    config = ModelConfig(init="mosaic", loss=loss, zero_init_residual=False)
    torch.manual_seed(0)
    built = model.build_model(config, 1000).module
    torch.manual_seed(0)
    assert same_weights(built, mosaic_reference(1000, loss))


def batchnorms(network: nn.Module) -> list[nn.BatchNorm2d]:
    return [module for module in network.modules() if isinstance(module, nn.BatchNorm2d)]


@pytest.mark.parametrize("head", ["fc", "conv1x1"])
def test_mosaic_init_draws_kaiming_fan_in_weights_and_uniform_batchnorm_gammas(head: str) -> None:
    network = model.build_model(ModelConfig(init="mosaic", head=head, zero_init_residual=False), 1000).module
    weights = torch.cat([norm.weight.detach() for norm in batchnorms(network)])
    assert weights.min() >= 0 and weights.max() < 1 and weights.mean() == pytest.approx(0.5, abs=0.02)
    assert all(torch.count_nonzero(norm.bias) == 0 for norm in batchnorms(network))
    # std sqrt(2 / fan_in) (PyTorch's kaiming_normal_ defaults), not torchvision's sqrt(2 / fan_out): a 1x1
    # convolution from 512 to 2048 channels has fan_in 512 (std 0.0625) and fan_out 2048 (std 0.03125).
    layers = [module for module in network.modules() if isinstance(module, nn.Conv2d | nn.Linear)]
    for layer in layers:
        weight = layer.weight.detach()
        fan_in = weight[0].numel()
        if weight.numel() >= 10_000:
            assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05), layer
    # The classifier too, the 1x1-convolution head included (2048 inputs); torchvision's default Linear and
    # PyTorch's default Conv2d draw uniform(+-1/sqrt(2048)), std 0.0128.
    assert network.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)


def test_zero_init_residual_applies_after_mosaic_init() -> None:
    network = model.build_model(ModelConfig(init="mosaic", zero_init_residual=True), NUM_CLASSES).module
    blocks = [m for m in network.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in blocks)
    first = blocks[0].bn1.weight.detach()
    assert first.min() > 0 and first.max() < 1  # the other BatchNorms keep Mosaic's uniform draw


# ---- the loss ----


def test_cross_entropy_is_composer_soft_cross_entropy() -> None:
    classifier = model.build_model(ModelConfig(), NUM_CLASSES)
    outputs = torch.randn(6, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6) % NUM_CLASSES
    expected = torch.nn.functional.cross_entropy(outputs, labels)
    assert torch.equal(classifier.loss(outputs, (None, labels)), expected)


def hand_bce(outputs: Tensor, targets: Tensor) -> float:
    """Sum over classes of -t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x)), averaged over the batch."""
    p = torch.sigmoid(outputs.double())
    t = targets.double()
    return (-(t * p.log() + (1 - t) * (1 - p).log())).sum(dim=1).mean().item()


def test_binary_cross_entropy_loss_equals_the_hand_computation() -> None:
    classifier = model.build_model(ModelConfig(loss=BCE), NUM_CLASSES)
    outputs = torch.randn(6, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6) % NUM_CLASSES
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, dims=0)  # MixUp's targets, each row summing to 1
    assert classifier.loss(outputs, (None, labels)).item() == pytest.approx(
        hand_bce(outputs, one_hot), rel=1e-6
    )
    assert classifier.loss(outputs, (None, mixed)).item() == pytest.approx(hand_bce(outputs, mixed), rel=1e-6)
    # Not the cross-entropy's value: the loss was switched.
    assert classifier.loss(outputs, (None, labels)).item() > 1.2 * torch.nn.functional.cross_entropy(
        outputs, labels
    )


def test_mean_binary_cross_entropy_is_timms_loss_and_starts_at_its_chance() -> None:
    """binary_cross_entropy_mean is timm's BinaryCrossEntropy (ResNet strikes back's loss) on the same soft
    targets, 1/C of the summed BCE; its doctor's chance loss is what the untrained classifier scores."""
    from timm.loss import BinaryCrossEntropy

    classifier = model.build_model(ModelConfig(loss="binary_cross_entropy_mean"), NUM_CLASSES)
    outputs = torch.randn(6, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    one_hot = torch.nn.functional.one_hot(torch.arange(6) % NUM_CLASSES, NUM_CLASSES).float()
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, dims=0)
    timm_bce = BinaryCrossEntropy(smoothing=0.0)
    assert classifier.loss(outputs, (None, mixed)).item() == pytest.approx(
        timm_bce(outputs, mixed).item(), rel=1e-6
    )
    assert classifier.loss(outputs, (None, mixed)).item() == pytest.approx(
        hand_bce(outputs, mixed) / NUM_CLASSES, rel=1e-6
    )
    classes = 1000
    classifier = model.build_model(ModelConfig(loss="binary_cross_entropy_mean"), classes)
    with torch.no_grad():
        outputs = classifier.module.train()(
            torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        )
    loss = classifier.loss(outputs, (None, torch.arange(8))).item()
    assert loss == pytest.approx(model.chance_loss("binary_cross_entropy_mean", classes), rel=0.25)
    assert model.chance_loss("binary_cross_entropy_mean", classes) == pytest.approx(7.907e-3, abs=1e-6)


@pytest.mark.parametrize("head", ["fc", "conv1x1"])
@pytest.mark.parametrize("init", ["torchvision", "mosaic"])
def test_bce_classifier_starts_near_one_over_num_classes(head: str, init: str) -> None:
    """The -log(C) bias makes every sigmoid start near 1/C (0.5 without it), so the loss starts at chance.

    Measured (8 images of 32 px, 1000 classes, training mode): mean probability 1.1-2.3 x 1/C and the first
    loss 1.0-1.17 x the chance loss (7.907) for either head and init, with or without zero_init_residual;
    without the bias the loss would be about 1000 ln 2 = 693.
    """
    classes = 1000
    for zero_init in (True, False):
        classifier = model.build_model(
            ModelConfig(loss=BCE, head=head, init=init, zero_init_residual=zero_init), classes
        )
        assert torch.all(classifier.module.fc.bias == -math.log(classes))
        with torch.no_grad():
            outputs = classifier.module.train()(
                torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
            )
        assert 0.8 / classes < torch.sigmoid(outputs).mean().item() < 3 / classes
        loss = classifier.loss(outputs, (None, torch.arange(8))).item()
        assert loss == pytest.approx(model.chance_loss(BCE, classes), rel=0.25)


def test_chance_loss_is_the_loss_of_a_uniform_guess() -> None:
    """What Composer's own losses give for logits whose softmax (CE) or sigmoid (BCE) is 1/C everywhere."""
    labels = torch.arange(NUM_CLASSES)
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
    mixed = 0.75 * one_hot + 0.25 * one_hot.roll(1, dims=0)  # MixUp's targets: the same value
    sigmoid_at_chance = torch.full(
        (NUM_CLASSES, NUM_CLASSES), -math.log(NUM_CLASSES - 1), dtype=torch.float64
    )
    for loss, logits in (
        ("cross_entropy", torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.float64)),
        (BCE, sigmoid_at_chance),
    ):
        for targets in (labels, mixed.double()):
            composer_value = model.LOSSES[loss](logits, targets).item()
            assert composer_value == pytest.approx(model.chance_loss(loss, NUM_CLASSES), rel=1e-6)
    assert model.chance_loss(BCE, 1000) == pytest.approx(7.907, abs=1e-3)


def test_unknown_loss_or_init_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"model.loss='hinge'.*binary_cross_entropy"):
        model.build_model(ModelConfig(loss="hinge"), NUM_CLASSES)
    with pytest.raises(UsageError, match=r"model.init='xavier'.*mosaic"):
        model.build_model(ModelConfig(init="xavier"), NUM_CLASSES)


def test_flip_tta_scores_the_sum_of_the_image_and_its_mirror_in_evaluation_only() -> None:
    """model.flip_tta (FFCV's lr_tta): eval_forward is f(x) + f(flip(x)); training's forward stays f(x)."""
    torch.manual_seed(0)
    plain = model.build_model(ModelConfig(name="resnet18"), NUM_CLASSES).eval()
    tta = model.build_model(ModelConfig(name="resnet18", flip_tta=True), NUM_CLASSES).eval()
    tta.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)  # not mirror-symmetric
    batch = (images, torch.tensor([0, 1]))
    with torch.no_grad():
        expected = plain.module(images) + plain.module(images.flip(dims=[3]))
        assert torch.allclose(tta.eval_forward(batch), expected, atol=1e-5)
        assert not torch.allclose(plain.eval_forward(batch), expected, atol=1e-3)
        assert torch.equal(tta(batch), plain(batch))  # the training forward
        symmetric = torch.cat([images[..., :16], images[..., :16].flip(dims=[3])], dim=3)
        assert torch.allclose(tta.eval_forward((symmetric, batch[1])), 2 * plain.module(symmetric), atol=1e-5)


def batchnorm_kinds(network: nn.Module) -> set[str]:
    """The class names of the network's normalisation layers."""
    return {
        type(module).__name__
        for module in network.modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
    }


def test_sync_batchnorm_on_four_gpu_processes_converts_the_supervised_model_and_keeps_torchvision_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recipes.loading import load_recipe
    from training.trainer import build_task_model

    # What composer -n 4 on GPUs gives the builder: a world of four (no process group is needed to convert).
    monkeypatch.setenv("WORLD_SIZE", "4")
    config = load_recipe("smoke", ["model.name=resnet50", "model.sync_batchnorm=true"])
    network = build_task_model(config, 1000, "gpu").module
    assert batchnorm_kinds(network) == {"SyncBatchNorm"}
    assert network.layer4[2].bn3.weight.abs().sum() == 0  # converted after zero_init_residual, which it kept
    resnet = torchvision.models.resnet50()
    resnet.load_state_dict(network.state_dict())  # strict: every key and shape
    torch.testing.assert_close(resnet.layer1[0].bn1.running_var, network.layer1[0].bn1.running_var)


@pytest.mark.parametrize(
    ("world_size", "device", "sync"), [("1", "gpu", True), ("4", "cpu", True), ("4", "gpu", False)]
)
def test_batchnorm_stays_on_one_process_on_the_cpu_or_when_not_asked(
    monkeypatch: pytest.MonkeyPatch, world_size: str, device: str, sync: bool
) -> None:
    monkeypatch.setenv("WORLD_SIZE", world_size)
    config = ModelConfig(name="resnet18", sync_batchnorm=sync)
    assert batchnorm_kinds(model.build_model(config, NUM_CLASSES, device=device).module) == {"BatchNorm2d"}
