"""Composer's own algorithms by recipe name: a recipe's ``algorithms:`` mapping becomes Composer objects.

Nothing is re-implemented here; this module only maps names to Composer classes (plus this project's
``data_progressive_resizing``, which Composer lacks), fills the ResNet-specific defaults Composer cannot guess,
and checks arguments against each class's signature before any work starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from composer.algorithms import (
    EMA,
    SAM,
    SWA,
    BlurPool,
    ChannelsLast,
    ColOut,
    CutMix,
    GradientClipping,
    LabelSmoothing,
    MixUp,
    ProgressiveResizing,
    RandAugment,
    StochasticDepth,
)
from composer.core import Algorithm
from omegaconf import DictConfig, OmegaConf

from algorithms.data_progressive_resizing import DataProgressiveResizing
from recipes.errors import UsageError

ALGORITHMS: dict[str, type[Algorithm]] = {
    "blurpool": BlurPool,
    "channels_last": ChannelsLast,
    "ema": EMA,
    "swa": SWA,
    "mixup": MixUp,
    "cutmix": CutMix,
    "randaugment": RandAugment,
    "label_smoothing": LabelSmoothing,
    "stochastic_depth": StochasticDepth,
    "progressive_resizing": ProgressiveResizing,
    "data_progressive_resizing": DataProgressiveResizing,
    "sam": SAM,
    "colout": ColOut,
    "gradient_clipping": GradientClipping,
}

# Defaults Composer cannot pick for us. StochasticDepth calls torchvision's Bottleneck "ResNetBottleneck".
RESNET_DEFAULTS: dict[str, dict[str, Any]] = {
    "stochastic_depth": {"target_layer_name": "ResNetBottleneck"},
}
# Arguments that only make sense for dict-style batches; recipes always feed (images, labels) tuples.
HIDDEN_ARGUMENTS = {"input_key", "target_key"}


def enabled_algorithms(algorithms: Mapping[str, Any] | DictConfig) -> dict[str, dict[str, Any]]:
    """The recipe's algorithms that are switched on (``null`` switches one off), with arguments as plain dicts."""
    if isinstance(algorithms, DictConfig):
        algorithms = OmegaConf.to_container(algorithms, resolve=True)
    enabled = {}
    for name, arguments in algorithms.items():
        if arguments is None or arguments is False:
            continue
        if arguments is True:
            arguments = {}
        enabled[name] = (
            {**RESNET_DEFAULTS.get(name, {}), **arguments} if isinstance(arguments, dict) else arguments
        )
    return enabled


def _argument_names(cls: type) -> tuple[set[str], set[str]]:
    """All keyword arguments of ``cls`` and the ones without a default."""
    parameters = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    names = {p.name for p in parameters} - HIDDEN_ARGUMENTS
    required = {p.name for p in parameters if p.default is inspect.Parameter.empty}
    return names, required


def validate_algorithms(algorithms: Mapping[str, Any] | DictConfig) -> None:
    """Fail with a clear message on an unknown algorithm, an unknown argument or a missing required one."""
    from recipes.loading import suggest

    for name, arguments in enabled_algorithms(algorithms).items():
        if name not in ALGORITHMS:
            raise UsageError(
                f"Unknown algorithm 'algorithms.{name}'.{suggest(name, list(ALGORITHMS))} "
                f"Known algorithms: {', '.join(ALGORITHMS)}."
            )
        if not isinstance(arguments, dict):
            raise UsageError(
                f"'algorithms.{name}' must be a mapping of {ALGORITHMS[name].__name__} arguments "
                f"({{}} for the defaults, null to switch it off), not {arguments!r}."
            )
        names, required = _argument_names(ALGORITHMS[name])
        for argument in arguments:
            if argument not in names:
                raise UsageError(
                    f"Unknown argument 'algorithms.{name}.{argument}' for {_owner(ALGORITHMS[name])}."
                    f"{suggest(argument, sorted(names))} "
                    f"Its arguments: {', '.join(sorted(names))}."
                )
        missing = required - set(arguments)
        if missing:
            raise UsageError(
                f"'algorithms.{name}' needs {', '.join(sorted(missing))} ({_owner(ALGORITHMS[name])} has no "
                "default for them)."
            )
        _check_swa_units(name, arguments)


def _check_swa_units(name: str, arguments: dict[str, Any]) -> None:
    """Composer's SWA only accepts start/end in 'dur' or 'ep' units; say so before the run instead of after."""
    if name != "swa":
        return
    for key in ("swa_start", "swa_end"):
        value = str(arguments.get(key, "0.7dur" if key == "swa_start" else "0.97dur"))
        if not (value.endswith("dur") or value.endswith("ep")):
            raise UsageError(
                f"'algorithms.swa.{key}' is '{value}'; Composer's SWA needs 'dur' or 'ep' units."
            )


def _owner(cls: type) -> str:
    """ "Composer's MixUp" or this project's class name, for messages."""
    return f"Composer's {cls.__name__}" if cls.__module__.startswith("composer") else cls.__name__


def build_algorithms(algorithms: Mapping[str, Any] | DictConfig) -> list[Algorithm]:
    """Composer algorithm objects for the recipe, in the recipe's order; a rejected value names its key."""
    validate_algorithms(algorithms)
    built = []
    for name, arguments in enabled_algorithms(algorithms).items():
        try:
            built.append(ALGORITHMS[name](**arguments))
        except (ValueError, TypeError) as error:
            raise UsageError(
                f"'algorithms.{name}' was rejected by {_owner(ALGORITHMS[name])}: {error}"
            ) from error
    return built
