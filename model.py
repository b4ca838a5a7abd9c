"""The networks: torchvision's ResNet wrapped as a Composer classifier (``build_model``), the same classifier
as a linear probe on a frozen pretrained backbone (``build_linear_probe``), and the same ResNet inside MoCo v3's
self-supervised model (``build_moco_model``), each from a recipe.

The architecture is torchvision's own (``torchvision.models.get_model``), so a run's weights load straight
into ``torchvision.models.resnet50``; or timm's pre-activation ResNet (``PREACT_NAMES``, ``timm_preact_resnet``),
whose weights load into ``timm.create_model`` and not into torchvision's. The way back from a checkpoint to a model (wrapper prefixes, EMA weight
sets, BlurPool and StochasticDepth re-applied) lives in ``training.weights``. The loss (Composer's soft
cross-entropy or its one-vs-all binary cross-entropy) and the weight initialisation (torchvision's or
Mosaic's) follow Mosaic's ResNet benchmark: mosaicml/examples@daddaeff,
``examples/benchmarks/resnet_imagenet/model.py``.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import torch
import torchvision
from composer.loss import binary_cross_entropy_with_logits, soft_cross_entropy
from composer.metrics import CrossEntropy
from composer.models import ComposerClassifier, ComposerModel
from composer.utils import dist
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from recipes.errors import UsageError
from recipes.schema import ClassifierBias, Head, Init, Loss, LossReduction, MocoConfig, ModelConfig

# Every torchvision classification model of the ResNet family (residual blocks: BasicBlock or Bottleneck).
RESNET_NAMES: tuple[str, ...] = tuple(
    name
    for name in torchvision.models.list_models(module=torchvision.models)
    if name.startswith(("resnet", "resnext", "wide_resnet"))
)
# timm's pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks") with BatchNorm and
# the plain 7x7 stem: PreActBasic blocks for 18/34, PreActBottleneck for 50 and deeper (timm/models/resnetv2.py).
PREACT_NAMES: tuple[str, ...] = ("resnetv2_18", "resnetv2_34", "resnetv2_50", "resnetv2_101", "resnetv2_152")

# model.loss -> Composer's loss function. Composer's BCE turns class indices into one-hot targets, sums the C
# one-vs-all terms and divides by the batch size (composer/loss/loss.py:58-67), so its scale is per image.
# binary_cross_entropy_mean is the same function averaged over the classes too, timm's BinaryCrossEntropy
# (F.binary_cross_entropy_with_logits, reduction 'mean'), the loss ResNet strikes back trained with: 1/C the
# size, which matters to an optimizer that clips the gradient norm (timm's LAMB clips at 1.0).
LOSSES: dict[str, Callable[..., Tensor]] = {
    Loss.cross_entropy: soft_cross_entropy,
    Loss.binary_cross_entropy: binary_cross_entropy_with_logits,
    Loss.binary_cross_entropy_mean: functools.partial(
        binary_cross_entropy_with_logits, reduction="mean", scale_by_batch_size=False
    ),
}
BCE_LOSSES = (Loss.binary_cross_entropy, Loss.binary_cross_entropy_mean)

Network = TypeVar("Network", bound=nn.Module)


def chance_loss(loss: str, num_classes: int) -> float:
    """The loss of guessing 1/num_classes for every class, as Composer computes ``loss`` per image.

    Cross-entropy: -ln(1/C) = ln C. Binary cross-entropy sums one term per class: -ln(1/C) for the true class
    and -ln(1 - 1/C) for each of the C - 1 others, about ln C + 1 for many classes (7.907 for 1000, where
    ln C is 6.908). Both are linear in the targets, so the value is the same for the soft targets of MixUp or
    label smoothing (any targets summing to 1); and on balanced classes 1/C is the best guess that ignores the
    image under either loss, so it is where a model that learns nothing stays. binary_cross_entropy_mean
    averages those C terms instead of summing them: the same value divided by C.
    """
    if loss == Loss.cross_entropy:
        return math.log(num_classes)
    if loss in BCE_LOSSES:
        summed = math.log(num_classes) - (num_classes - 1) * math.log1p(-1 / num_classes)
        return summed / num_classes if loss == Loss.binary_cross_entropy_mean else summed
    raise UsageError(f"Unknown model.loss={loss!r}; choose one of: {', '.join(Loss)}.")


class ResNetClassifier(ComposerClassifier):
    """Composer's classifier, with accuracy that also works when the targets are dense (one-hot or soft).

    MixUp, CutMix and label smoothing hand the loss dense targets. torchmetrics' MulticlassAccuracy silently
    mis-scores one-hot targets (it reads them as per-element labels) and fails for top-k, so accuracy gets the
    argmax of dense targets; the cross-entropy metric keeps the dense targets, which it handles.
    """

    # model.flip_tta: evaluation scores each image by its logits plus its mirror image's (build_model sets it).
    flip_tta: bool = False

    def eval_forward(self, batch: Any, outputs: Any | None = None) -> Any:
        """Composer's eval forward, plus the horizontally flipped batch's logits under ``flip_tta``.

        FFCV's ImageNet reference (``lr_tta``, train_imagenet.py) sums the two, so validation accuracy, the
        validation loss and evaluate.py all score the sum; training and the exported network are unchanged.
        Composer passes ``outputs`` when it scores training metrics on the batch just trained: those stay as is.
        """
        if outputs is not None:
            return outputs
        logits = self(batch)
        if self.flip_tta:
            inputs, targets = batch
            logits = logits + self((inputs.flip(dims=[3]), targets))
        return logits

    def update_metric(self, batch: Any, outputs: Tensor, metric: Metric) -> None:
        """Update ``metric`` with the batch's targets, as class indices for accuracy."""
        _, targets = batch
        dense = targets.is_floating_point() and targets.ndim == outputs.ndim
        if isinstance(metric, MulticlassAccuracy) and dense:
            targets = targets.argmax(dim=1)
        metric.update(outputs, targets)


# The linear probe of facebookresearch/moco-v3 main_lincls.py (commit c349e6e; lines cited as lincls:N).
PROBE_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
PROBE_FC_INIT_STD = 0.01  # lincls:168


class LinearProbe(ResNetClassifier):
    """A ResNetClassifier whose backbone is frozen and stays in eval mode; only ``fc`` trains.

    Composer calls ``model.train()`` at the start of every epoch and after each evaluation
    (composer/trainer/trainer.py:2406, 0.32.1), which would put BatchNorm back in training mode: with no gradient
    its weights stay, but its running statistics would move with every batch. The official probe holds the whole
    model in eval mode for that reason (lincls:341-348, "it is not legitimate to change any part of the
    pre-trained model"), so ``train`` here leaves every module but ``fc`` in eval mode. Its state dict is a
    ResNetClassifier's, so ``evaluate.py`` and the export load its checkpoint as a supervised one.
    """

    def train(self, mode: bool = True) -> LinearProbe:
        """Set ``fc`` (and the wrapper) to ``mode``; the backbone stays in eval mode."""
        super().train(mode)
        for name, child in self.module.named_children():
            if name != "fc":
                child.eval()
        return self


class ConvHeadResNet(nn.Module):
    """A torchvision ResNet whose classifier is a 1x1 convolution applied before global average pooling.

    The backbone modules keep torchvision's attribute names, so their state-dict keys are torchvision's; the
    convolution is named ``fc`` like torchvision's classifier. Averaging commutes with the (linear) 1x1
    convolution, so this computes the same function as torchvision's avgpool+fc, and ``fc.weight`` reshaped
    from (K, C, 1, 1) to (K, C) loads into torchvision (see `to_torchvision_state_dict`).
    """

    def __init__(self, resnet: ResNet, num_classes: int) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.fc = nn.Conv2d(resnet.fc.in_features, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of shape (batch, num_classes)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.fc(x), 1), 1)


def unknown_architecture(name: str) -> UsageError:
    """The error for a model.name that is neither a torchvision ResNet nor a timm pre-activation one."""
    return UsageError(
        f"Unknown architecture model.name={name!r}; torchvision's ResNets are: {', '.join(RESNET_NAMES)}; "
        f"timm's pre-activation ResNets are: {', '.join(PREACT_NAMES)}."
    )


def torchvision_resnet(name: str, num_classes: int) -> ResNet:
    """torchvision's untrained ResNet ``name``, with torchvision's own initialisation."""
    if name in PREACT_NAMES:
        raise UsageError(
            f"model.name={name} is timm's pre-activation ResNet, and this needs one of torchvision's (task "
            "moco_v3, task linear_probe and the conversion to torchvision weights take only those): use "
            f"model.name=resnet50 or another of: {', '.join(RESNET_NAMES)}."
        )
    if name not in RESNET_NAMES:
        raise unknown_architecture(name)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def preact_types() -> tuple[type[nn.Module], ...]:
    """timm's ``ResNetV2``, ``PreActBasic`` and ``PreActBottleneck``, or nothing while timm is not imported.

    timm is imported only when a pre-activation network is built (``timm_preact_resnet``): importing it costs
    every process seconds (it registers hundreds of architectures), and without it no network can hold a timm
    module, so the type checks below are answered without it.
    """
    resnetv2 = sys.modules.get("timm.models.resnetv2")
    return (resnetv2.ResNetV2, resnetv2.PreActBasic, resnetv2.PreActBottleneck) if resnetv2 else ()


def timm_preact_resnet(name: str, num_classes: int, drop_path_rate: float = 0.0) -> nn.Module:
    """timm's untrained pre-activation ResNet ``name`` (one of ``PREACT_NAMES``), with timm's own initialisation.

    Pre-activation as He et al. 2016 define it (timm 1.0, timm/models/resnetv2.py): ``PreActBottleneck.forward``
    normalises first, ``norm1`` (a ``BatchNormAct2d``: BatchNorm then ReLU) before ``conv1``, ``norm2`` before
    ``conv2``, ``norm3`` before ``conv3``, and adds the untouched block input (a projection shortcut reads the
    normalised input); ``ResNetV2.norm`` is the last BN+ReLU, before pooling. The classifier ``head.fc`` is a 1x1
    ``Conv2d`` after global average pooling (``ClassifierHead(use_conv=True)``), the same function as a Linear.
    timm's init: Kaiming-normal (fan_out) convolutions, BatchNorm 1 and 0, ``head.fc`` N(0, 0.01) with zero bias.
    ``drop_path_rate`` is timm's stochastic depth: ``DropPath`` drops each block's residual branch per image in
    training (scaling the kept ones by 1 / (1 - rate)), at rates rising linearly from 0 over the blocks to it; at
    eval it does nothing, so the weights load and export the same. Never ``pretrained=True``: that downloads
    from the Hugging Face Hub.
    """
    import timm  # lazily: preact_types

    return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path_rate)


def check_drop_path_rate(name: str, drop_path_rate: float) -> None:
    """Refuse a ``model.drop_path_rate`` that would be ignored (a torchvision ResNet) or is out of range."""
    if drop_path_rate == 0 or name not in (*PREACT_NAMES, *RESNET_NAMES):  # an unknown name is refused apart
        return
    if name in RESNET_NAMES:
        raise UsageError(
            f"model.drop_path_rate={drop_path_rate} is timm's stochastic depth, for timm's pre-activation ResNets "
            f"({', '.join(PREACT_NAMES)}); model.name={name} is torchvision's, which takes "
            "algorithms.stochastic_depth instead. Remove model.drop_path_rate."
        )
    if not 0 < drop_path_rate < 1:
        raise UsageError(
            f"model.drop_path_rate={drop_path_rate} is out of range; set it in [0, 1) (e.g. 0.05, what ResNet "
            "strikes back's A1 and A2 ResNet-50 recipes use, Wightman et al. 2021)."
        )


def build_network(name: str, num_classes: int, drop_path_rate: float = 0.0) -> nn.Module:
    """The untrained network ``name``: a torchvision ResNet or a timm pre-activation ResNet."""
    check_drop_path_rate(name, drop_path_rate)
    if name in PREACT_NAMES:
        return timm_preact_resnet(name, num_classes, drop_path_rate)
    return torchvision_resnet(name, num_classes)


def classifier_layer(network: nn.Module) -> nn.Linear | nn.Conv2d:
    """The layer that produces the logits: torchvision's ``fc`` (or the conv1x1 head's), timm's ``head.fc``."""
    return network.head.fc if isinstance(network, preact_types()[:1]) else network.fc


def mosaic_init(network: nn.Module) -> None:
    """Mosaic's ``weight_init``, module by module as their ``model.apply`` does (so in the same random order).

    Kaiming-normal with PyTorch's defaults (fan_in, gain sqrt(2): std sqrt(2 / fan_in)) on every Conv2d and
    Linear weight, the 1x1-convolution head included; BatchNorm2d weights uniform in [0, 1) (``torch.rand``)
    and biases zero. Other biases keep their construction init, as in Mosaic's code. timm's ``BatchNormAct2d``
    is a BatchNorm2d and its convolutions and ``head.fc`` are Conv2d, so the same holds for ``PREACT_NAMES``.
    """

    def weight_init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape))
                module.bias.zero_()

    network.apply(weight_init)


def start_at_chance_under_bce(classifier: nn.Linear | nn.Conv2d, num_classes: int) -> None:
    """Set the classifier bias to -log(num_classes), as Mosaic does under BCE: each class's sigmoid starts
    near 1/num_classes instead of 1/2 (computed as Mosaic computes it, in float32)."""
    with torch.no_grad():
        classifier.bias.fill_(-torch.log(torch.tensor(float(num_classes))))


def zero_init_residual(network: nn.Module) -> None:
    """Zero the last BatchNorm gamma of every residual block (Goyal et al. 2017), so each starts as identity.

    The same rule as torchvision's ``zero_init_residual`` (torchvision/models/resnet.py:218-223, 0.22),
    applied here so that it also holds after an initialisation that rewrites every BatchNorm (Mosaic's).
    A pre-activation block's residual branch ends in a convolution with no BatchNorm after it, so timm's
    ``zero_init_last`` zeroes that convolution's weight instead (``conv3``, or ``conv2`` in ``PreActBasic``).
    """
    preact_blocks = preact_types()[1:]
    for module in network.modules():
        if isinstance(module, preact_blocks):
            module.zero_init_last()
        elif isinstance(module, Bottleneck) and module.bn3.weight is not None:
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock) and module.bn2.weight is not None:
            nn.init.zeros_(module.bn2.weight)


def batchnorm_syncs(world_size: int, device: str) -> bool:
    """Whether a recipe's sync_batchnorm converts BatchNorm to SyncBatchNorm: only with several processes on
    GPUs. One process has no other statistics to share, and PyTorch's SyncBatchNorm raises on CPU tensors
    (torch/nn/modules/batchnorm.py:779-787 in 2.7.0)."""
    return world_size > 1 and device == "gpu"


def sync_batchnorm(network: Network, enabled: bool, device: str) -> Network:
    """``network`` with every BatchNorm converted to SyncBatchNorm when ``enabled`` and ``batchnorm_syncs`` holds
    for this world and ``device``; otherwise unchanged. SyncBatchNorm keeps BatchNorm's parameters, buffers and
    state-dict keys, so the weights still load into torchvision's ResNet."""
    if enabled and batchnorm_syncs(dist.get_world_size(), device):
        return nn.SyncBatchNorm.convert_sync_batchnorm(network)
    return network


def is_residual_block(module: nn.Module) -> bool:
    """A ResNet's unit for FSDP and for activation checkpointing: one residual block. Smaller units (single
    convolutions) would all-gather and recompute more often for no memory a ResNet needs back; BatchNorm layers
    get units of their own from PyTorch regardless, to stay fp32 under mixed precision."""
    return isinstance(module, (BasicBlock, Bottleneck, *preact_types()[1:]))


def build_model(
    model_cfg: ModelConfig | DictConfig,
    num_classes: int,
    classifier_type: type[ResNetClassifier] = ResNetClassifier,
    *,
    device: str = "cpu",
) -> ResNetClassifier:
    """The recipe's ResNet as a Composer classifier (``classifier_type``: ``LinearProbe`` for a probe) with
    acc1/acc5/loss metrics and the recipe's loss.

    Initialised in this order: torchvision's init at construction (and the 1x1 head's PyTorch default; timm's
    init for ``PREACT_NAMES``), then Mosaic's init if chosen, then the -log(C) classifier bias under BCE (unless
    ``classifier_bias: layer_default``), then zero_init_residual. BatchNorm becomes SyncBatchNorm under
    ``model.sync_batchnorm`` when training on ``device`` "gpu" with several processes (``sync_batchnorm``); the
    default "cpu" is for every model that is not trained by a launched run (evaluation, export, planning), which
    keeps BatchNorm. ``head: conv1x1`` is refused for timm's networks: their head is a 1x1 convolution already
    (after pooling, the same function), and rebuilding it would rename timm's keys for nothing.
    """
    if model_cfg.num_classes is not None and model_cfg.num_classes != num_classes:
        raise UsageError(
            f"model.num_classes is {model_cfg.num_classes} but the data has {num_classes} classes; "
            f"remove model.num_classes (it defaults to the data's count) or set it to {num_classes}."
        )
    # A recipe is checked by the schema; a ModelConfig built in code is not.
    for key, value, choices in (
        ("head", model_cfg.head, Head),
        ("loss", model_cfg.loss, Loss),
        ("init", model_cfg.init, Init),
        ("classifier_bias", model_cfg.classifier_bias, ClassifierBias),
    ):
        if value not in set(choices):
            raise UsageError(f"Unknown model.{key}={value!r}; choose one of: {', '.join(choices)}.")
    if model_cfg.name in PREACT_NAMES and model_cfg.head == Head.conv1x1:
        raise UsageError(
            f"model.head=conv1x1 with model.name={model_cfg.name}: timm's pre-activation ResNet already "
            "classifies with a 1x1 convolution (head.fc, after global pooling, the same function as conv1x1's "
            "before it). Remove model.head (or set model.head=fc)."
        )
    network = build_network(model_cfg.name, num_classes, model_cfg.drop_path_rate)
    if model_cfg.head == Head.conv1x1:
        network = ConvHeadResNet(network, num_classes)
    if model_cfg.init == Init.mosaic:
        mosaic_init(network)
    if model_cfg.loss in BCE_LOSSES and model_cfg.classifier_bias == ClassifierBias.chance_under_bce:
        start_at_chance_under_bce(classifier_layer(network), num_classes)
    if model_cfg.zero_init_residual:
        zero_init_residual(network)
    network = sync_batchnorm(network, model_cfg.sync_batchnorm, device)
    # Read by Composer under FSDP (distributed/dist_strategy.py): one FSDP unit and one checkpointed unit per block.
    network.fsdp_wrap_fn = is_residual_block
    network.activation_checkpointing_fn = is_residual_block
    train_metrics = MetricCollection({"acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro")})
    val_metrics = MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "loss": CrossEntropy(),
        }
    )
    classifier = classifier_type(
        network,
        num_classes=num_classes,
        train_metrics=train_metrics,
        val_metrics=val_metrics,
        loss_fn=LOSSES[model_cfg.loss],
    )
    classifier.flip_tta = bool(model_cfg.flip_tta)
    return classifier


def build_linear_probe(
    model_cfg: ModelConfig | DictConfig, num_classes: int, backbone: dict[str, Tensor], source: str
) -> LinearProbe:
    """``build_model``'s classifier with ``backbone`` (torchvision keys, no ``fc``) loaded, frozen and held in
    eval mode, and ``fc`` initialised as the official probe: weight N(0, 0.01), bias 0 (lincls:163-169; under
    binary cross-entropy the bias keeps ``build_model``'s -log(num_classes)). ``source`` names the weights'
    origin in errors. Loading is strict but for the classifier, which must be the only thing missing
    (lincls:188-189)."""
    probe = build_model(model_cfg, num_classes, LinearProbe)
    network = probe.module
    missing, unexpected = network.load_state_dict(backbone, strict=False)
    if sorted(missing) != sorted(PROBE_CLASSIFIER_KEYS) or unexpected:
        raise UsageError(
            f"The backbone in {source} does not fit model.name={model_cfg.name}: missing {missing}, unexpected "
            f"{unexpected}. Set model.name to the pretraining run's."
        )
    network.requires_grad_(False)
    network.fc.requires_grad_(True)
    with torch.no_grad():
        network.fc.weight.normal_(mean=0.0, std=PROBE_FC_INIT_STD)
        if model_cfg.loss == Loss.cross_entropy:
            network.fc.bias.zero_()
    return probe.train()


# MoCo v3 (Chen, Xie and He 2021) as facebookresearch/moco-v3 builds it for ResNets, commit c349e6e; line numbers
# below are of that commit's moco/builder.py ("builder") and main_moco.py ("main_moco").
# The backbone's state-dict keys in a MocoV3 model: the torchvision ResNet, its fc being the projector.
MOCO_BACKBONE_PREFIX = "base_encoder."


class MocoOutputs(NamedTuple):
    """What ``MocoV3.forward`` hands ``MocoV3.loss`` for one (micro)batch.

    ``query1``/``query2``: this rank's predictor outputs for views 1 and 2 (not normalised; they carry the
    gradient). ``keys1``/``keys2``: the momentum encoder's outputs for the same views, L2-normalised and gathered
    from every rank in rank order (no gradient), so row ``N * rank + i`` is this rank's image ``i``.
    """

    query1: Tensor
    query2: Tensor
    keys1: Tensor
    keys2: Tensor


def build_mlp(
    num_layers: int, input_dim: int, hidden_dim: int, output_dim: int, last_bn: bool = True
) -> nn.Sequential:
    """MoCo v3's MLP (builder:36-52): Linear without bias, then BatchNorm1d and ReLU after every layer but the last;
    the last Linear followed by a BatchNorm1d without affine parameters when ``last_bn`` (SimCLR's design, gamma
    and beta removed, builder:47-50). The layers keep PyTorch's default initialisation, as the official code."""
    layers: list[nn.Module] = []
    for index in range(num_layers):
        in_dim = input_dim if index == 0 else hidden_dim
        out_dim = output_dim if index == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(in_dim, out_dim, bias=False))
        if index < num_layers - 1:
            layers += [nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when none is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_keys(keys: Tensor) -> Tensor:
    """Every rank's ``keys`` concatenated in rank order (builder:126-137, ``concat_all_gather``); the result
    carries no gradient (all_gather has none). Every rank must pass the same number of keys."""
    _, world_size = _world()
    if world_size == 1:
        return keys
    gathered = [torch.empty_like(keys) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, keys.contiguous())
    return torch.cat(gathered)


def contrastive_loss(
    query: Tensor, keys: Tensor, temperature: float, rank: int, negatives: Tensor | None = None
) -> Tensor:
    """One InfoNCE term (builder:63-73): cross-entropy of this rank's normalised queries against all ranks'
    normalised keys, logits ``q k^T / T``, the positive of query ``i`` at ``N * rank + i``, times ``2 T``.

    ``negatives`` (normalised keys of earlier steps, MoCo v2's queue) become extra logit columns after the
    gathered keys, as MoCo v2's ``l_neg`` (facebookresearch/moco@a419ef2 moco/builder.py:164-175). The logits
    are computed in float32 whatever the autocast precision (the official code runs them under AMP).
    """
    query = nn.functional.normalize(query.float(), dim=1)
    logits = query @ keys.float().T
    if negatives is not None:
        logits = torch.cat([logits, query @ negatives.float().T], dim=1)
    logits = logits / temperature
    count = query.shape[0]
    labels = torch.arange(count, device=query.device) + count * rank
    return nn.functional.cross_entropy(logits, labels) * (2 * temperature)


def moco_initial_loss(gathered_keys: int, queue_size: int, temperature: float, loss_reduction: str) -> float:
    """The loss a MoCo v3 model starts near: each term's cross-entropy over ``gathered_keys + queue_size`` logits
    (one positive, the rest negatives) is ln(that count) while the model cannot tell them apart, times ``2 T``;
    the two terms summed double it (``sum``) or are averaged (``mean``).

    ``gathered_keys`` is what one query is scored against from the current step: the per-rank (micro)batch size
    times the world size. The estimate holds at T = 1 (logits are cosines in [-1, 1], nearly equal at
    initialisation); at small T the spread of the initial cosines, divided by T, raises the start above it.
    """
    if loss_reduction not in set(LossReduction):
        raise UsageError(
            f"Unknown moco.loss_reduction={loss_reduction!r}; choose one of: {', '.join(LossReduction)}."
        )
    per_term = math.log(gathered_keys + queue_size) * 2 * temperature
    return 2 * per_term if loss_reduction == LossReduction.sum else per_term


class MocoV3(ComposerModel):
    """MoCo v3 around a torchvision ResNet (builder:11-109, ``MoCo_ResNet``), as a Composer model.

    ``base_encoder`` is the ResNet with its fc replaced by the projector (feature dim -> hidden -> output, last
    BN without affine, builder:100-106); ``predictor`` maps output -> hidden -> output with no last BN
    (builder:109); ``momentum_encoder`` is a copy of ``base_encoder`` that no gradient reaches (builder:27-34)
    and that ``update_momentum_encoder`` moves towards it each step, before the keys are computed (builder:89-94;
    the update reads only base parameters, which the query pass does not change, so doing it before the query
    pass, as the ``MomentumEncoder`` callback does at the start of each step, is the same). ``loss`` is the two
    symmetric terms ``L(q1, k2) + L(q2, k1)`` (builder:96), summed as the official code or averaged.

    With ``queue_size > 0`` a ``queue`` buffer of earlier steps' keys (MoCo v2's, initialised to random unit
    vectors, facebookresearch/moco@a419ef2 moco/builder.py:59-63) adds negatives to every term; ``forward``
    keeps each step's gathered keys of both views and ``enqueue_step_keys`` writes them at ``queue_pointer``,
    wrapping around, once per optimizer step. The momentum encoder, queue and pointer are parameters and
    buffers, so a checkpoint holds them. No metrics (``get_metrics`` is Composer's empty default): the training
    loss is Composer's ``loss/train/total``.

    Inputs: ``(images, targets)`` with images (B, 2, 3, H, W), view 1 then view 2; targets are ignored. With
    microbatches each microbatch's queries are scored against that microbatch's gathered keys (the official
    loop has no gradient accumulation).
    """

    def __init__(self, backbone: ResNet, moco_cfg: MocoConfig | DictConfig) -> None:
        super().__init__()
        feature_dim = backbone.fc.in_features
        backbone.fc = build_mlp(2, feature_dim, moco_cfg.projector_hidden_dim, moco_cfg.output_dim)
        self.base_encoder = backbone
        self.momentum_encoder = copy.deepcopy(backbone)
        self.momentum_encoder.requires_grad_(False)
        self.predictor = build_mlp(
            2, moco_cfg.output_dim, moco_cfg.predictor_hidden_dim, moco_cfg.output_dim, last_bn=False
        )
        self.temperature = float(moco_cfg.temperature)
        self.loss_reduction = str(moco_cfg.loss_reduction)
        self.queue_size = int(moco_cfg.queue_size)
        self.step_keys: list[Tensor] = []
        if self.queue_size > 0:
            queue = nn.functional.normalize(torch.randn(self.queue_size, moco_cfg.output_dim), dim=1)
            self.register_buffer("queue", queue)
            self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_momentum_encoder(self, momentum: float) -> None:
        """``k = m k + (1 - m) q`` for every momentum-encoder parameter k and base parameter q (builder:57-61)."""
        momentum_parameters = list(self.momentum_encoder.parameters())
        base_parameters = [parameter.detach() for parameter in self.base_encoder.parameters()]
        torch._foreach_mul_(momentum_parameters, momentum)
        torch._foreach_add_(momentum_parameters, base_parameters, alpha=1.0 - momentum)

    def forward(self, batch: Any) -> MocoOutputs:
        """Queries of both views (with gradient) and both views' normalised keys from all ranks (without)."""
        images, _ = batch
        view1, view2 = images[:, 0], images[:, 1]
        query1 = self.predictor(self.base_encoder(view1))
        query2 = self.predictor(self.base_encoder(view2))
        with torch.no_grad():
            keys1 = gather_keys(nn.functional.normalize(self.momentum_encoder(view1).float(), dim=1))
            keys2 = gather_keys(nn.functional.normalize(self.momentum_encoder(view2).float(), dim=1))
        if self.queue_size > 0 and self.training:
            self.step_keys.append(torch.cat([keys1, keys2]))
        return MocoOutputs(query1, query2, keys1, keys2)

    def loss(self, outputs: MocoOutputs, batch: Any, *args: Any, **kwargs: Any) -> Tensor:
        """``L(q1, k2) + L(q2, k1)`` (``sum``) or half of it (``mean``), each term ``contrastive_loss``."""
        rank, _ = _world()
        negatives = self.queue if self.queue_size > 0 else None
        total = contrastive_loss(
            outputs.query1, outputs.keys2, self.temperature, rank, negatives
        ) + contrastive_loss(outputs.query2, outputs.keys1, self.temperature, rank, negatives)
        return total if self.loss_reduction == LossReduction.sum else total / 2

    def discard_step_keys(self) -> None:
        """Forget the keys kept since the step began (a step retried after an out-of-memory error recomputes
        them)."""
        self.step_keys.clear()

    @torch.no_grad()
    def enqueue_step_keys(self) -> None:
        """Write the step's kept keys into the queue at its pointer, oldest first, wrapping around (MoCo v2's
        ``_dequeue_and_enqueue``, facebookresearch/moco@a419ef2 moco/builder.py:76-89, without its requirement
        that the queue be a multiple of the batch); a step with more keys than the queue keeps its last ones."""
        if self.queue_size == 0 or not self.step_keys:
            return
        keys = torch.cat(self.step_keys)[-self.queue_size :].to(self.queue.dtype)
        self.step_keys.clear()
        positions = (self.queue_pointer + torch.arange(keys.shape[0], device=keys.device)) % self.queue_size
        self.queue[positions] = keys
        self.queue_pointer.copy_((self.queue_pointer + keys.shape[0]) % self.queue_size)


def moco_backbone_state(model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The backbone of a MocoV3 state dict as torchvision names it: ``base_encoder.*`` without the projector
    (``fc``), so it loads into ``torchvision.models.resnet50`` with only ``fc`` missing."""
    return {
        key.removeprefix(MOCO_BACKBONE_PREFIX): value
        for key, value in model_state.items()
        if key.startswith(MOCO_BACKBONE_PREFIX) and not key.startswith(f"{MOCO_BACKBONE_PREFIX}fc.")
    }


def _check_moco_settings(model_cfg: ModelConfig | DictConfig, moco_cfg: MocoConfig | DictConfig) -> None:
    """Reject the classifier keys that mean nothing without a classifier, and out-of-range MoCo settings."""
    if model_cfg.init not in set(Init):
        raise UsageError(f"Unknown model.init={model_cfg.init!r}; choose one of: {', '.join(Init)}.")
    for key, value, default in (
        ("num_classes", model_cfg.num_classes, None),
        ("head", model_cfg.head, Head.fc),
        ("loss", model_cfg.loss, Loss.cross_entropy),
    ):
        if value != default:
            raise UsageError(
                f"model.{key}={value!r} has no effect under task: moco_v3 (the projector replaces the "
                f"classifier and the loss is MoCo's); remove model.{key} from the recipe."
            )
    if moco_cfg.loss_reduction not in set(LossReduction):
        raise UsageError(
            f"Unknown moco.loss_reduction={moco_cfg.loss_reduction!r}; choose one of: {', '.join(LossReduction)}."
        )
    checks = (
        ("temperature", moco_cfg.temperature > 0, "a positive number (1.0 for ResNets in MoCo v3)"),
        ("momentum", 0 <= moco_cfg.momentum <= 1, "between 0 and 1 (0.99 in MoCo v3)"),
        ("queue_size", moco_cfg.queue_size >= 0, "0 (no queue, as v3) or a positive number of keys"),
        ("projector_hidden_dim", moco_cfg.projector_hidden_dim > 0, "a positive width (4096 in MoCo v3)"),
        ("predictor_hidden_dim", moco_cfg.predictor_hidden_dim > 0, "a positive width (4096 in MoCo v3)"),
        ("output_dim", moco_cfg.output_dim > 0, "a positive width (256 in MoCo v3)"),
    )
    for key, valid, expected in checks:
        if not valid:
            raise UsageError(f"moco.{key}={getattr(moco_cfg, key)!r} is out of range; set it to {expected}.")


def build_moco_model(
    model_cfg: ModelConfig | DictConfig, moco_cfg: MocoConfig | DictConfig, *, device: str
) -> MocoV3:
    """The recipe's ResNet inside MoCo v3: torchvision's architecture and init, Mosaic's init if chosen, then
    zero_init_residual (the official runs pass ``zero_init_residual=True``, main_moco:185-187), then the MLPs
    with PyTorch's default init; BatchNorm converted to SyncBatchNorm when ``moco.sync_batchnorm``, the world
    has more than one process and ``device`` is "gpu" (``sync_batchnorm``; main_moco:192-196 converts on CUDA
    only)."""
    _check_moco_settings(model_cfg, moco_cfg)
    check_drop_path_rate(model_cfg.name, model_cfg.drop_path_rate)
    backbone = torchvision_resnet(model_cfg.name, moco_cfg.projector_hidden_dim)
    if model_cfg.init == Init.mosaic:
        mosaic_init(backbone)
    if model_cfg.zero_init_residual:
        zero_init_residual(backbone)
    return sync_batchnorm(MocoV3(backbone, moco_cfg), moco_cfg.sync_batchnorm, device)
