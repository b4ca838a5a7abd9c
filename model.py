"""The network (torchvision's ResNet as a Composer classifier) and the way back from a checkpoint to a model.

Training changes what a checkpoint looks like: Composer's classifier and DDP prefix every key with ``module.``,
``torch.compile`` with ``_orig_mod.``, BlurPool replaces strided convolutions and max-pools (new keys, blur
buffers), StochasticDepth rescales residual branches at eval time (same keys, different outputs), and EMA keeps a
second weight set in the algorithm state. The functions here undo each of these explicitly, and always load with
``strict=True`` so a recipe that does not match its checkpoint fails loudly instead of half-loading.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch
import torchvision
from composer.functional import apply_blurpool, apply_stochastic_depth
from composer.metrics import CrossEntropy
from composer.models import ComposerClassifier
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchvision.models.resnet import Bottleneck, ResNet

from algorithms.registry import enabled_algorithms
from recipes.errors import UsageError
from recipes.schema import ModelConfig, RecipeConfig

# Every torchvision classification model of the ResNet family; all of them accept `zero_init_residual`.
RESNET_NAMES: tuple[str, ...] = tuple(
    name
    for name in torchvision.models.list_models(module=torchvision.models)
    if name.startswith(("resnet", "resnext", "wide_resnet"))
)
HEADS: tuple[str, ...] = ("fc", "conv1x1")

# Recipe algorithms after which the trained network is no longer plain torchvision ResNet: BlurPool adds blur
# layers (new state-dict keys); StochasticDepth keeps the keys but scales each residual branch by
# (1 - drop_rate) at eval time. Both must be re-applied before loading (`build_model_for_checkpoint`).
ARCHITECTURE_CHANGING_ALGORITHMS: tuple[str, ...] = ("blurpool", "stochastic_depth")

# Wrappers that prefix every key: ComposerClassifier and DDP (`module.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

# Buffers that only BlurPool's layers have (BlurConv2d, BlurPool2d: blur_filter; BlurMaxPool2d: filt2d).
_BLURPOOL_BUFFER_SUFFIXES = (".blur_filter", ".filt2d")

WeightSet = Literal["auto", "ema", "raw", "model"]


class ResNetClassifier(ComposerClassifier):
    """Composer's classifier, with accuracy that also works when the targets are dense (one-hot or soft).

    MixUp, CutMix and label smoothing hand the loss dense targets. torchmetrics' MulticlassAccuracy silently
    mis-scores one-hot targets (it reads them as per-element labels) and fails for top-k, so accuracy gets the
    argmax of dense targets; the cross-entropy metric keeps the dense targets, which it handles.
    """

    def update_metric(self, batch: Any, outputs: Tensor, metric: Metric) -> None:
        """Update ``metric`` with the batch's targets, as class indices for accuracy."""
        _, targets = batch
        dense = targets.is_floating_point() and targets.ndim == outputs.ndim
        if isinstance(metric, MulticlassAccuracy) and dense:
            targets = targets.argmax(dim=1)
        metric.update(outputs, targets)


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


class ModelStates(TypedDict, total=False):
    """The weight sets in a checkpoint; ``ema``, ``raw`` and ``model_holds`` only when EMA had started."""

    # The weights in `state.model`, with wrapper prefixes removed.
    model: dict[str, Tensor]
    # The EMA weights and the training (raw) weights.
    ema: dict[str, Tensor]
    raw: dict[str, Tensor]
    # Which of the two `state.model` holds: Composer swaps the EMA weights in for eval and for checkpointing.
    model_holds: Literal["ema", "raw"]


def _resnet(name: str, num_classes: int, zero_init_residual: bool = False) -> ResNet:
    """torchvision's untrained ResNet ``name``."""
    if name not in RESNET_NAMES:
        raise UsageError(
            f"Unknown architecture model.name={name!r}; torchvision's ResNets are: {', '.join(RESNET_NAMES)}."
        )
    return torchvision.models.get_model(
        name, weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


def build_model(model_cfg: ModelConfig | DictConfig, num_classes: int) -> ResNetClassifier:
    """The recipe's ResNet as a Composer classifier with acc1/acc5/loss metrics and soft cross-entropy loss."""
    if model_cfg.num_classes is not None and model_cfg.num_classes != num_classes:
        raise UsageError(
            f"model.num_classes is {model_cfg.num_classes} but the data has {num_classes} classes; "
            f"remove model.num_classes (it defaults to the data's count) or set it to {num_classes}."
        )
    if model_cfg.head not in HEADS:
        raise UsageError(f"Unknown model.head={model_cfg.head!r}; choose one of: {', '.join(HEADS)}.")
    # torchvision's own zero_init_residual zeroes the last BN gamma of every residual block.
    network: nn.Module = _resnet(model_cfg.name, num_classes, zero_init_residual=model_cfg.zero_init_residual)
    if model_cfg.head == "conv1x1":
        network = ConvHeadResNet(network, num_classes)
    train_metrics = MetricCollection({"acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro")})
    val_metrics = MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "loss": CrossEntropy(),
        }
    )
    return ResNetClassifier(
        network, num_classes=num_classes, train_metrics=train_metrics, val_metrics=val_metrics
    )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Composer checkpoint or a plain state dict onto the CPU.

    This unpickles arbitrary objects (Composer checkpoints hold more than tensors): only read files you trust.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = sorted(p.name for p in path.glob("*.pt"))
        raise UsageError(
            f"Checkpoint path {path} is a folder; pass a checkpoint file in it"
            + (f", e.g. {path / candidates[-1]} (found: {', '.join(candidates)})." if candidates else ".")
        )
    if not path.is_file():
        raise UsageError(
            f"Checkpoint file {path} does not exist; check the path (and the run's save_folder)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise UsageError(
            f"Cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint ({error}). "
            "An interrupted save, copy or download is the usual cause: fetch it again or use an earlier one."
        ) from error
    if not isinstance(checkpoint, dict):
        raise UsageError(
            f"Checkpoint {path} holds a {type(checkpoint).__name__}, not a Composer checkpoint or a state dict."
        )
    return checkpoint


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict with the ``module.`` / ``_orig_mod.`` prefixes shared by all keys removed, however nested."""
    state_dict = dict(state_dict)
    stripped = True
    while state_dict and stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
                stripped = True
    return state_dict


def extract_model_state(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights of a Composer checkpoint or plain state dict, keyed like torchvision (``conv1.weight``)."""
    state = checkpoint.get("state")
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        return strip_wrapper_prefixes(state["model"])
    if checkpoint and all(isinstance(value, Tensor) for value in checkpoint.values()):
        return strip_wrapper_prefixes(checkpoint)
    raise UsageError(
        "The checkpoint is neither a Composer checkpoint (no 'state.model') nor a state dict of tensors; "
        f"its top-level keys are: {', '.join(map(str, list(checkpoint)[:8]))}."
    )


def _ema_algorithm_state(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The EMA algorithm's saved state, if the run used EMA."""
    algorithms = checkpoint.get("state", {}).get("algorithms") or []
    # Composer saves algorithms as a list of (class name, state) pairs; older versions used a dict.
    pairs = algorithms.items() if isinstance(algorithms, Mapping) else algorithms
    for name, algorithm_state in pairs:
        if name == "EMA":
            return algorithm_state
    return None


def extract_model_states(checkpoint: Mapping[str, Any]) -> ModelStates:
    """The checkpoint's weight sets: ``model`` always; ``ema``, ``raw`` and ``model_holds`` when EMA had started.

    Composer's EMA keeps one spare copy of the weights in ``state.algorithms`` (``ema_model`` with
    ``named_parameters_dict`` and ``named_buffers_dict``) and swaps it with ``state.model`` for eval and before
    each checkpoint. ``ema_weights_active`` says which is where: true means ``state.model`` holds the EMA weights
    and the algorithm state the training weights; false, the reverse. Before ``ema_start`` the spare copy is just
    the initial weights, so no EMA set is reported.
    """
    model = extract_model_state(checkpoint)
    ema_state = _ema_algorithm_state(checkpoint)
    if ema_state is None or not ema_state.get("ema_started", False):
        return {"model": model}
    stored = strip_wrapper_prefixes(
        {**ema_state["ema_model"]["named_parameters_dict"], **ema_state["ema_model"]["named_buffers_dict"]}
    )
    # Keys EMA does not track (parameters without gradients) are never swapped, so both sets share them.
    other = {key: stored.get(key, value) for key, value in model.items()}
    if ema_state["ema_weights_active"]:
        return {"model": model, "ema": model, "raw": other, "model_holds": "ema"}
    return {"model": model, "ema": other, "raw": model, "model_holds": "raw"}


def _has_blurpool_keys(state_dict: Mapping[str, Tensor]) -> bool:
    return any(key.endswith(_BLURPOOL_BUFFER_SUFFIXES) for key in state_dict)


def _mismatch_hint(
    missing: list[str],
    unexpected: list[str],
    expected: Mapping[str, Tensor],
    state_dict: Mapping[str, Tensor],
) -> str:
    """The likeliest reason a checkpoint does not fit the recipe's architecture."""
    if any(key.endswith(_BLURPOOL_BUFFER_SUFFIXES) for key in unexpected):
        return "The checkpoint was trained with BlurPool but the recipe has no algorithms.blurpool."
    if any(key.endswith(_BLURPOOL_BUFFER_SUFFIXES) for key in missing):
        return "The recipe enables algorithms.blurpool but the checkpoint was trained without it."
    if "fc.weight" in expected and "fc.weight" in state_dict:
        saved, wanted = state_dict["fc.weight"].shape, expected["fc.weight"].shape
        if len(saved) != len(wanted):
            head = "conv1x1" if len(saved) == 4 else "fc"
            return f"The checkpoint's classifier head is {head!r}; set model.head: {head}."
        if saved[0] != wanted[0]:
            return (
                f"The checkpoint classifies {saved[0]} classes but the data has {wanted[0]}: "
                "evaluate on data with the classes it was trained on."
            )
    return "The recipe's model.name, model.head or algorithms.blurpool differ from the checkpoint's."


def _check_keys_match(expected: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise a UsageError naming the differing keys unless ``state_dict`` fits ``expected`` exactly."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        key for key in expected if key in state_dict and expected[key].shape != state_dict[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    details = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", mismatched))
        if keys
    ]
    raise UsageError(
        f"The weights in {source} do not fit the recipe's architecture; keys {'; '.join(details)}. "
        f"{_mismatch_hint(missing, unexpected, expected, state_dict)} "
        "Pass the recipe the checkpoint was trained with (the recipe.yaml saved beside it)."
    )


def _architecture_algorithms(recipe_cfg: RecipeConfig | DictConfig) -> dict[str, dict[str, Any]]:
    """The recipe's enabled architecture-changing algorithms with the arguments their functional forms take."""
    algorithms = enabled_algorithms(recipe_cfg.algorithms)
    selected = {
        name: dict(algorithms[name]) for name in ARCHITECTURE_CHANGING_ALGORITHMS if name in algorithms
    }
    # drop_warmup only ramps the rate during training; eval uses the full drop_rate, as Composer does on load.
    selected.get("stochastic_depth", {}).pop("drop_warmup", None)
    return selected


def _apply_architecture_algorithms(network: nn.Module, recipe_cfg: RecipeConfig | DictConfig) -> None:
    """Re-apply the recipe's architecture-changing algorithms to ``network`` as Composer did at Event.INIT."""
    algorithms = _architecture_algorithms(recipe_cfg)
    if "blurpool" in algorithms:
        apply_blurpool(network, **algorithms["blurpool"])
    if "stochastic_depth" in algorithms:
        apply_stochastic_depth(network, **algorithms["stochastic_depth"])


def build_model_for_checkpoint(
    recipe_cfg: RecipeConfig | DictConfig,
    num_classes: int,
    state_dict: Mapping[str, Tensor],
    source: str = "the checkpoint",
) -> ResNetClassifier:
    """The recipe's exact trained architecture (BlurPool, StochasticDepth re-applied) with ``state_dict`` loaded strictly.

    ``source`` names the weights' origin (a file) in error messages.
    """
    model = build_model(recipe_cfg.model, num_classes)
    _apply_architecture_algorithms(model.module, recipe_cfg)
    state_dict = strip_wrapper_prefixes(state_dict)
    _check_keys_match(model.module.state_dict(), state_dict, source)
    model.module.load_state_dict(state_dict, strict=True)
    return model


def load_model_from_checkpoint(
    path: str | os.PathLike[str],
    recipe_cfg: RecipeConfig | DictConfig,
    num_classes: int,
    weights: WeightSet = "auto",
) -> ResNetClassifier:
    """Rebuild the model a checkpoint was trained with and load one of its weight sets.

    ``weights``: ``"ema"`` or ``"raw"`` (training) weights of an EMA run, ``"model"`` whatever ``state.model``
    holds, or ``"auto"``: the EMA weights when there are any (what Composer evaluated), else ``state.model``.
    The model is returned in training mode, like any new module; call ``.eval()`` before inference.
    """
    states = extract_model_states(read_checkpoint(path))
    choice = choose_weight_set(states, weights, f"Checkpoint {path}")
    return build_model_for_checkpoint(recipe_cfg, num_classes, states[choice], source=f"checkpoint {path}")


def choose_weight_set(states: ModelStates, weights: str, source: str) -> str:
    """The key of ``states`` that ``weights`` names; ``"auto"`` is the EMA weights when there are any (what
    Composer evaluated), else the model's. ``source`` names the checkpoint in errors."""
    choice = ("ema" if "ema" in states else "model") if weights == "auto" else weights
    if choice not in ("ema", "raw", "model"):
        raise UsageError(f"weights {weights!r} is not one of: auto, ema, raw, model.")
    if choice not in states:
        raise UsageError(
            f"{source} has no {choice!r} weights: it has no started EMA (the recipe had no algorithms.ema, or "
            "the checkpoint predates ema_start). Use weights 'auto' or 'model'."
        )
    return choice


def to_torchvision_state_dict(
    state_dict: Mapping[str, Tensor], recipe_cfg: RecipeConfig | DictConfig
) -> dict[str, Tensor]:
    """Weights that load with ``strict=True`` into plain ``torchvision.models.<model.name>(num_classes=K)``.

    Exact conversions: the conv1x1 head's weight is reshaped to torchvision's Linear (the two compute the same
    function), and StochasticDepth's eval-time (1 - drop_rate) residual scaling is folded into each block's
    last BatchNorm. BlurPool adds layers torchvision does not have, so it raises instead.
    """
    state_dict = strip_wrapper_prefixes(state_dict)
    algorithms = _architecture_algorithms(recipe_cfg)
    if "blurpool" in algorithms or _has_blurpool_keys(state_dict):
        raise UsageError(
            "This checkpoint was trained with BlurPool, which adds blur filters before strided convolutions and "
            "max-pools: its architecture differs from torchvision's ResNet and its weights cannot load into it "
            "without changing its outputs. Load it with model.load_model_from_checkpoint(path, recipe, "
            "num_classes), which rebuilds the BlurPool architecture."
        )
    if "fc.weight" not in state_dict:
        raise UsageError("The weights have no 'fc.weight'; they are not a ResNet classifier's weights.")
    num_classes = state_dict["fc.weight"].shape[0]
    if state_dict["fc.weight"].ndim == 4:
        state_dict["fc.weight"] = state_dict["fc.weight"].flatten(1)
    # Built on the meta device: only its key names, shapes and block drop rates are needed.
    with torch.device("meta"):
        reference = _resnet(recipe_cfg.model.name, num_classes)
    _check_keys_match(reference.state_dict(), state_dict, "the checkpoint")
    if "stochastic_depth" in algorithms:
        apply_stochastic_depth(reference, **algorithms["stochastic_depth"])
        for name, block in reference.named_modules():
            if isinstance(block, Bottleneck) and hasattr(block, "drop_rate"):
                # At eval, Composer's stochastic Bottleneck returns bn3(...) * (1 - drop_rate) + identity.
                scale = 1 - block.drop_rate
                for key in (f"{name}.bn3.weight", f"{name}.bn3.bias"):
                    state_dict[key] = state_dict[key] * scale
    return state_dict
