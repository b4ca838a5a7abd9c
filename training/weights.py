"""From a checkpoint back to a model: reading it, choosing its EMA or raw weights, rebuilding the architecture it
was trained with, and converting its weights for plain torchvision.

Training changes what a checkpoint looks like: Composer's classifier and DDP prefix every key with ``module.``,
``torch.compile`` with ``_orig_mod.``, BlurPool replaces strided convolutions and max-pools (new keys, blur
buffers), StochasticDepth rescales residual branches at eval time (same keys, different outputs), and EMA keeps a
second weight set in the algorithm state. The functions here undo each of these explicitly, and always load with
``strict=True`` so a recipe that does not match its checkpoint fails loudly instead of half-loading.

The linear probe starts from a checkpoint too: ``load_linear_probe`` reads the backbone out of a MoCo v3
pretraining checkpoint (a file or an s3:// object) and refuses any other kind, saying what it is.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch
from composer.algorithms.weight_standardization.weight_standardization import WeightStandardizer
from composer.functional import (
    apply_blurpool,
    apply_factorization,
    apply_squeeze_excite,
    apply_stochastic_depth,
    apply_weight_standardization,
)
from composer.utils import get_file, parse_uri
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torchvision.models.resnet import Bottleneck

from algorithms.registry import enabled_algorithms
from model import (
    MOCO_BACKBONE_PREFIX,
    PREACT_NAMES,
    PROBE_CLASSIFIER_KEYS,
    LinearProbe,
    ResNetClassifier,
    build_linear_probe,
    build_model,
    moco_backbone_state,
    torchvision_resnet,
)
from recipes.errors import UsageError
from recipes.schema import RecipeConfig, Task
from training.checkpointing import S3Destination, upload_client_config

# Recipe algorithms after which the trained network is no longer plain torchvision ResNet: BlurPool adds blur
# layers (new state-dict keys); StochasticDepth keeps the keys but scales each residual branch by
# (1 - drop_rate) at eval time. Both must be re-applied before loading (`build_model_for_checkpoint`).
ARCHITECTURE_CHANGING_ALGORITHMS: tuple[str, ...] = (
    "blurpool",
    "stochastic_depth",
    "squeeze_excite",
    "factorize",
    "weight_standardization",
    "ghost_batchnorm",
)
# The surgery re-applied, in the recipe's order as Composer applied it (Factorize and BlurPool wrap each other's
# convolutions, so the order names the keys). SqueezeExcite adds blocks and Factorize replaces convolutions by two
# (new keys; torchvision has neither), WeightStandardization parametrizes convolution weights
# (``conv1.parametrizations.weight.original``). GhostBatchNorm is not re-applied: at eval time its layers are plain
# BatchNorm with the running statistics, so its keys (``bn1.batchnorm.weight``) are renamed instead.
REAPPLIED_SURGERY = {
    "blurpool": apply_blurpool,
    "stochastic_depth": apply_stochastic_depth,
    "squeeze_excite": apply_squeeze_excite,
    "factorize": apply_factorization,
    "weight_standardization": apply_weight_standardization,
}
# Algorithms whose layers torchvision's ResNet has no place for.
NOT_TORCHVISION = {
    "squeeze_excite": "adds Squeeze-and-Excitation blocks after convolutions",
    "factorize": "replaces convolutions by pairs of low-rank ones",
}

# Wrappers that prefix every key: ComposerClassifier and DDP (`module.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

# Buffers that only BlurPool's layers have (BlurConv2d, BlurPool2d: blur_filter; BlurMaxPool2d: filt2d).
_BLURPOOL_BUFFER_SUFFIXES = (".blur_filter", ".filt2d")

WeightSet = Literal["auto", "ema", "raw", "model"]


class ModelStates(TypedDict, total=False):
    """The weight sets in a checkpoint; ``ema``, ``raw`` and ``model_holds`` only when EMA had started."""

    # The weights in `state.model`, with wrapper prefixes removed.
    model: dict[str, Tensor]
    # The EMA weights and the training (raw) weights.
    ema: dict[str, Tensor]
    raw: dict[str, Tensor]
    # Which of the two `state.model` holds: Composer swaps the EMA weights in for eval and for checkpointing.
    model_holds: Literal["ema", "raw"]


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
    """The state dict with the ``module.`` / ``_orig_mod.`` wrapper prefixes removed, however nested.

    PyTorch's ``consume_prefix_in_state_dict_if_present`` strips one prefix; wrappers nest in either order
    (DDP around a compiled model, a compiled classifier), so it is applied until no key changes.
    """
    state_dict = dict(state_dict)
    while True:
        keys = list(state_dict)
        for prefix in WRAPPER_PREFIXES:
            consume_prefix_in_state_dict_if_present(state_dict, prefix)
        if list(state_dict) == keys:
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
        name: dict(arguments)
        for name, arguments in algorithms.items()
        if name in ARCHITECTURE_CHANGING_ALGORITHMS
    }
    # drop_warmup only ramps the rate during training; eval uses the full drop_rate, as Composer does on load.
    selected.get("stochastic_depth", {}).pop("drop_warmup", None)
    return selected


def _apply_architecture_algorithms(network: nn.Module, recipe_cfg: RecipeConfig | DictConfig) -> None:
    """Re-apply the recipe's architecture-changing algorithms to ``network`` as Composer did at Event.INIT."""
    for name, arguments in _architecture_algorithms(recipe_cfg).items():
        if name in REAPPLIED_SURGERY:
            REAPPLIED_SURGERY[name](network, **arguments)


def plain_batchnorm_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A GhostBatchNorm network's weights under plain BatchNorm's keys (``bn1.batchnorm.weight`` -> ``bn1.weight``).

    Exact for evaluation: in eval mode each ghost layer normalises with its BatchNorm's running statistics.
    """
    return {
        ".".join(part for part in key.split(".") if part != "batchnorm"): value
        for key, value in state_dict.items()
    }


def standardized_weights(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """WeightStandardization folded in: each ``X.parametrizations.weight.original`` becomes ``X.weight``, standardized
    by Composer's own ``WeightStandardizer``, which is what the parametrized convolution computes with."""
    suffix = ".parametrizations.weight.original"
    return {
        (key.removesuffix(suffix) + ".weight" if key.endswith(suffix) else key): (
            WeightStandardizer()(value) if key.endswith(suffix) else value
        )
        for key, value in state_dict.items()
    }


def build_model_for_checkpoint(
    recipe_cfg: RecipeConfig | DictConfig,
    num_classes: int,
    state_dict: Mapping[str, Tensor],
    source: str = "the checkpoint",
) -> ResNetClassifier:
    """The recipe's exact trained architecture (BlurPool, StochasticDepth re-applied) with ``state_dict`` loaded strictly.

    ``source`` names the weights' origin (a file) in error messages.
    """
    state_dict = strip_wrapper_prefixes(state_dict)
    # A linear probe's checkpoint is a supervised classifier's (model.LinearProbe), so it loads like one.
    if recipe_cfg.task == Task.moco_v3 or any(key.startswith(MOCO_BACKBONE_PREFIX) for key in state_dict):
        raise UsageError(
            f"{source} is from self-supervised pretraining (task: moco_v3): a backbone with projection heads and no "
            "classifier, so there is nothing to evaluate or export as a classifier. Its backbone is "
            "model.moco_backbone_state(weights), which loads into torchvision.models.resnet50 with fc left out; "
            "train a classifier on it (a linear probe) to measure it."
        )
    model = build_model(recipe_cfg.model, num_classes)
    _apply_architecture_algorithms(model.module, recipe_cfg)
    if "ghost_batchnorm" in enabled_algorithms(recipe_cfg.algorithms):
        state_dict = plain_batchnorm_keys(state_dict)
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
    last BatchNorm; GhostBatchNorm's keys are renamed to BatchNorm's and WeightStandardization is folded into the
    weights (both exact at eval time). BlurPool, SqueezeExcite and Factorize add layers torchvision does not have,
    and timm's pre-activation ResNets have other layers altogether, so those raise instead.
    """
    name = recipe_cfg.model.name
    if name in PREACT_NAMES:
        raise UsageError(
            f"model.name={name} is timm's pre-activation ResNet (BatchNorm and ReLU before each convolution, a "
            "last BatchNorm before pooling): its layers and keys are not torchvision's post-activation ResNet's, "
            f"so its weights do not load into torchvision.models. Load them into timm.create_model('{name}', "
            "pretrained=False, num_classes=K) with strict=True (what evaluate.py --export writes), or rebuild "
            "the model with training.weights.load_model_from_checkpoint(path, recipe, num_classes)."
        )
    state_dict = strip_wrapper_prefixes(state_dict)
    algorithms = _architecture_algorithms(recipe_cfg)
    if "blurpool" in algorithms or _has_blurpool_keys(state_dict):
        raise UsageError(
            "This checkpoint was trained with BlurPool, which adds blur filters before strided convolutions and "
            "max-pools: its architecture differs from torchvision's ResNet and its weights cannot load into it "
            "without changing its outputs. Load it with training.weights.load_model_from_checkpoint(path, recipe, "
            "num_classes), which rebuilds the BlurPool architecture."
        )
    blocked = [name for name in NOT_TORCHVISION if name in algorithms]
    if blocked:
        reasons = "; ".join(f"algorithms.{name} {NOT_TORCHVISION[name]}" for name in blocked)
        raise UsageError(
            f"This checkpoint was trained with {', '.join(blocked)}: {reasons}. torchvision's ResNet has no place "
            "for those layers, so the weights cannot load into it. Load them with "
            "training.weights.load_model_from_checkpoint(path, recipe, num_classes), which rebuilds the trained "
            "architecture, or use the ONNX model evaluate.py --export writes."
        )
    if "ghost_batchnorm" in algorithms:
        state_dict = plain_batchnorm_keys(state_dict)
    if "weight_standardization" in algorithms:
        state_dict = standardized_weights(state_dict)
    if "fc.weight" not in state_dict:
        raise UsageError("The weights have no 'fc.weight'; they are not a ResNet classifier's weights.")
    num_classes = state_dict["fc.weight"].shape[0]
    if state_dict["fc.weight"].ndim == 4:
        state_dict["fc.weight"] = state_dict["fc.weight"].flatten(1)
    # Built on the meta device: only its key names, shapes and block drop rates are needed.
    with torch.device("meta"):
        reference = torchvision_resnet(recipe_cfg.model.name, num_classes)
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


def read_checkpoint_at(
    location: str, endpoint_url: str | None = None, region: str | None = None
) -> dict[str, Any]:
    """``read_checkpoint`` of a local file or an ``s3://bucket/key`` object (downloaded into a temporary folder
    with the uploads' retry settings; ``endpoint_url`` and ``region`` as the recipe's ``s3_endpoint_url`` and
    ``s3_region``, None: the environment's).

    On S3, Composer's ``latest-rank0.pt`` is not an object but a pointer, ``latest-rank0.pt.symlink``, whose body
    names the newest checkpoint beside it (``CheckpointSaver`` uploads it, relative to the save_folder's prefix,
    which is this store's). Composer's ``get_file`` follows it when the object itself is missing."""
    backend, bucket, key = parse_uri(location)
    if not backend:
        return read_checkpoint(location)
    folder, _, name = key.strip("/").rpartition("/")
    if backend != "s3" or not bucket or not name:
        raise UsageError(f"Checkpoint {location} is not a local file or an s3://BUCKET/KEY object.")
    store = S3Destination(bucket, folder, endpoint_url, region).store(upload_client_config())
    with tempfile.TemporaryDirectory() as download:
        path = Path(download) / name
        try:
            get_file(name, str(path), object_store=store, progress_bar=False)
        except FileNotFoundError as error:
            # S3 answers 403 for a key these credentials may not list, and Composer reads 403 as missing too.
            raise UsageError(
                f"Checkpoint {location} not found: neither the object {store.get_uri(name)} nor Composer's pointer "
                f"to a checkpoint, {store.get_uri(f'{name}.symlink')}, is there (or the checkpoint that "
                "pointer names is gone, or these credentials may not read them). List the run's checkpoints "
                f"(aws s3 ls {store.get_uri('')}) and pass one, e.g. {store.get_uri('ep<E>-ba<B>-rank0.pt')}."
            ) from error
        except Exception as error:  # boto3 and s3transfer raise several types once retries are spent
            raise UsageError(
                f"Cannot download checkpoint {location} ({error}); check the URI, the AWS credentials and "
                "s3_endpoint_url / s3_region."
            ) from error
        return read_checkpoint(path)


def moco_backbone_from_checkpoint(checkpoint: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """The pretrained backbone of a MoCo v3 checkpoint (``base_encoder`` without its projector, torchvision keys,
    as main_lincls.py keeps it, facebookresearch/moco-v3@c349e6e main_lincls.py:178-185); a UsageError naming
    ``source`` and what it holds instead when it is not a MoCo v3 pretraining checkpoint."""
    fix = (
        "model.backbone_checkpoint takes a checkpoint of a task: moco_v3 run (runs/<run_name>/ep*-ba*-rank0.pt of "
        "train.py moco_v3_smoke, or of your pretraining recipe)."
    )
    try:
        state = extract_model_state(checkpoint)
    except UsageError as error:
        raise UsageError(f"{source}: {error} {fix}") from error
    if any(key.startswith(MOCO_BACKBONE_PREFIX) for key in state):
        return moco_backbone_state(state)
    if all(key in state for key in PROBE_CLASSIFIER_KEYS):
        classes = state["fc.weight"].shape[0]
        raise UsageError(
            f"{source} is a classifier's checkpoint (a supervised run or a linear probe: {classes} classes, "
            "keys fc.weight, fc.bias), not a MoCo v3 pretraining checkpoint, so there is no self-supervised "
            f"backbone to probe. {fix} To evaluate the classifier, run evaluate.py --checkpoint {source}."
        )
    keys = ", ".join(list(state)[:5])
    raise UsageError(
        f"{source} is not a MoCo v3 pretraining checkpoint (no {MOCO_BACKBONE_PREFIX}* keys; it has {keys}, ...). {fix}"
    )


def load_linear_probe(recipe_cfg: RecipeConfig | DictConfig, num_classes: int) -> LinearProbe:
    """The recipe's linear probe: the backbone of ``model.backbone_checkpoint`` (a file or s3:// URI) checked
    against the recipe's architecture, loaded into ``model.build_linear_probe``, frozen."""
    location = recipe_cfg.model.backbone_checkpoint
    if location is None:
        raise UsageError(
            "task: linear_probe needs model.backbone_checkpoint=PATH (a MoCo v3 pretraining checkpoint)."
        )
    source = f"model.backbone_checkpoint {location}"
    checkpoint = read_checkpoint_at(location, recipe_cfg.s3_endpoint_url, recipe_cfg.s3_region)
    backbone = moco_backbone_from_checkpoint(checkpoint, source)
    # Built on the meta device: only its key names and shapes are needed.
    with torch.device("meta"):
        reference = torchvision_resnet(recipe_cfg.model.name, num_classes).state_dict()
    expected = {key: value for key, value in reference.items() if key not in PROBE_CLASSIFIER_KEYS}
    _check_keys_match(expected, backbone, source)
    return build_linear_probe(recipe_cfg.model, num_classes, backbone, source)
