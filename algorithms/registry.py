"""Composer's own algorithms by recipe name: a recipe's ``algorithms:`` mapping becomes Composer objects.

Nothing is re-implemented here; this module only maps names to Composer classes (plus this project's
``data_progressive_resizing``, which Composer lacks, ``ghost_batchnorm``, Composer's with an evaluation that
takes any batch size, and ``mixup_or_cutmix``, Composer's MixUp or CutMix per batch), fills the ResNet-specific
defaults Composer cannot guess, checks arguments against each class's signature before any work starts, and converts the settings Composer
counts in batches from samples when a recipe writes them so (``SAMPLE_COUNTED``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from composer.algorithms import (
    EMA,
    SAM,
    SWA,
    AugMix,
    BlurPool,
    ChannelsLast,
    ColOut,
    CutMix,
    CutOut,
    Factorize,
    GradientClipping,
    LabelSmoothing,
    LayerFreezing,
    MixUp,
    ProgressiveResizing,
    RandAugment,
    SelectiveBackprop,
    SqueezeExcite,
    StochasticDepth,
    WeightStandardization,
)
from composer.core import Algorithm, TimeUnit
from omegaconf import DictConfig, OmegaConf

from algorithms.data_progressive_resizing import DataProgressiveResizing
from algorithms.ghost_batchnorm import GhostBatchNorm
from algorithms.mixup_or_cutmix import MixUpOrCutMix
from recipes.durations import parse_time, steps_in
from recipes.errors import UsageError, suggest

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
    "augmix": AugMix,
    "cutout": CutOut,
    "selective_backprop": SelectiveBackprop,
    "squeeze_excite": SqueezeExcite,
    "ghost_batchnorm": GhostBatchNorm,
    "layer_freezing": LayerFreezing,
    "factorize": Factorize,
    "weight_standardization": WeightStandardization,
    "mixup_or_cutmix": MixUpOrCutMix,
}

# Defaults Composer cannot pick for us. StochasticDepth calls torchvision's Bottleneck "ResNetBottleneck".
RESNET_DEFAULTS: dict[str, dict[str, Any]] = {
    "stochastic_depth": {"target_layer_name": "ResNetBottleneck"},
}
# Settings Composer counts in batches (optimizer steps) that a recipe may also write in samples ("204800sp"), so
# that they mean the same images at any global batch: converted to ceil(samples / global batch) steps when built.
# Composer's EMA takes half_life and update_interval as time strings in "ba" or "ep" with matching units
# (composer/algorithms/ema/ema.py:172-198), SAM its interval as an int of steps (composer/algorithms/sam/sam.py:92).
SAMPLE_COUNTED: dict[str, tuple[str, ...]] = {
    "ema": ("half_life", "update_interval"),
    "sam": ("interval",),
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
        _check_sample_counted(name, arguments)


def validate_recipe_algorithms(config: DictConfig) -> None:
    """The recipe's ``algorithms`` section, checked before any work: names, arguments, and the combinations
    that cannot work (the two progressive resizings together; the data-side one without the fast pipeline;
    SelectiveBackprop on the fast pipeline's uint8 batches; WeightStandardization listed before Factorize;
    mixup_or_cutmix beside mixup or cutmix)."""
    validate_algorithms(config.algorithms)
    enabled = enabled_algorithms(config.algorithms)
    _check_surgery_order(list(enabled))
    both = [name for name in ("mixup", "cutmix") if name in enabled]
    if "mixup_or_cutmix" in enabled and both:
        raise UsageError(
            f"'algorithms.mixup_or_cutmix' already mixes every batch with MixUp or CutMix, and the recipe also "
            f"enables {' and '.join(f'algorithms.{name}' for name in both)}, which would mix it again. Set "
            f"{', '.join(f'algorithms.{name}=null' for name in both)}, or mixup_or_cutmix=null."
        )
    if "selective_backprop" in enabled and config.data.pipeline == "fast":
        raise UsageError(
            "'algorithms.selective_backprop' runs the model on each batch as it leaves the loader "
            "(Event.AFTER_DATALOADER) to pick the hardest images, and data.pipeline=fast hands over uint8 images "
            "that are normalised only later, just before the forward pass: the selection pass would fail on "
            "them. Set data.pipeline=torchvision (normalised in the workers) or algorithms.selective_backprop=null."
        )
    if "data_progressive_resizing" not in enabled:
        return
    if "progressive_resizing" in enabled:
        raise UsageError(
            "'algorithms.progressive_resizing' and 'algorithms.data_progressive_resizing' are both on; keep one "
            "(data_progressive_resizing also spares the CPU; set the other to null)."
        )
    if config.data.pipeline != "fast":
        raise UsageError(
            "'algorithms.data_progressive_resizing' needs data.pipeline=fast (its crop step takes the size); "
            f"data.pipeline is '{config.data.pipeline}'. Use algorithms.progressive_resizing with it instead."
        )


def _check_surgery_order(names: list[str]) -> None:
    """Composer applies the surgery algorithms at Event.INIT in the recipe's order. Factorize replaces each
    convolution it factorizes with two new ones, so a WeightStandardization listed before it would lose its
    parametrization on those convolutions (13 of ResNet-18's 20 at min_channels=128)."""
    if {"weight_standardization", "factorize"} <= set(names) and names.index(
        "weight_standardization"
    ) < names.index("factorize"):
        raise UsageError(
            "'algorithms.weight_standardization' comes before 'algorithms.factorize' in the recipe, and "
            "Composer applies them in that order: the convolutions Factorize then replaces would no longer "
            "be standardized. List factorize first (or set one of them to null)."
        )


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


def _check_sample_counted(name: str, arguments: dict[str, Any]) -> None:
    """EMA's times and SAM's interval in a unit Composer takes, or in samples; EMA's two in matching units once
    samples are read as batches (Composer would refuse the mix only when the run is built)."""
    if name == "sam" and "interval" in arguments:
        _check_sam_interval(arguments["interval"])
    if name != "ema":
        return
    units = {}
    for key in SAMPLE_COUNTED["ema"]:
        value = arguments.get(key)
        if value is None:
            continue
        unit = parse_time(value, f"algorithms.ema.{key}").unit
        if unit not in (TimeUnit.BATCH, TimeUnit.EPOCH, TimeUnit.SAMPLE):
            raise UsageError(
                f"'algorithms.ema.{key}' is '{value}'; Composer's EMA counts it in batches ('100ba') or epochs "
                "('1ep'), and this project also takes samples ('204800sp')."
            )
        units[key] = TimeUnit.BATCH if unit == TimeUnit.SAMPLE else unit
    if len(set(units.values())) > 1:
        raise UsageError(
            f"'algorithms.ema.half_life' ({arguments['half_life']}) and 'algorithms.ema.update_interval' "
            f"({arguments['update_interval']}) must both count epochs or both count steps (batches or "
            "samples): Composer's EMA needs matching units."
        )


def _check_sam_interval(interval: object) -> None:
    """Composer's int of steps, or a time string in samples."""
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > 0:
        return
    try:
        time = parse_time(interval, "algorithms.sam.interval") if isinstance(interval, str) else None
    except UsageError:
        time = None
    if time is None or time.unit != TimeUnit.SAMPLE or time.value <= 0:
        raise UsageError(
            f"'algorithms.sam.interval' is {interval!r}; give it as a whole number of optimizer steps (Composer's, "
            "e.g. 10) or in samples (e.g. 20480sp), which is converted to steps at the run's global_batch_size."
        )


def batch_counted_settings(name: str, arguments: dict[str, Any]) -> dict[str, int]:
    """The settings in ``arguments`` written in optimizer steps (EMA's in "ba", SAM's interval as an int), by key,
    with their step counts: the ones that mean other numbers of images at another global batch."""
    counted = {}
    for key in SAMPLE_COUNTED.get(name, ()):
        value = arguments.get(key)
        if name == "sam" and isinstance(value, int) and not isinstance(value, bool):
            counted[key] = value
        elif name == "ema" and isinstance(value, str):
            time = parse_time(value, f"algorithms.{name}.{key}")
            if time.unit == TimeUnit.BATCH:
                counted[key] = int(time.value)
    return counted


def in_steps(name: str, arguments: dict[str, Any], global_batch_size: int) -> dict[str, Any]:
    """The algorithm's arguments with its settings written in samples converted to optimizer steps at
    ``global_batch_size``, ceil(samples / batch) by ``recipes.durations.steps_in``: "Nba" for EMA, an int for
    SAM. Everything else stays as written."""
    converted = dict(arguments)
    for key in SAMPLE_COUNTED.get(name, ()):
        value = arguments.get(key)
        if not isinstance(value, str):
            continue
        where = f"algorithms.{name}.{key}"
        if parse_time(value, where).unit != TimeUnit.SAMPLE:
            continue
        # Samples need only the global batch (steps_in reads batches_per_epoch for epochs alone).
        steps = steps_in(value, where, batches_per_epoch=0, global_batch_size=global_batch_size)
        converted[key] = steps if name == "sam" else f"{steps}ba"
    return converted


def _owner(cls: type) -> str:
    """ "Composer's MixUp" or this project's class name, for messages."""
    return f"Composer's {cls.__name__}" if cls.__module__.startswith("composer") else cls.__name__


def build_algorithms(
    algorithms: Mapping[str, Any] | DictConfig, *, global_batch_size: int
) -> list[Algorithm]:
    """Composer algorithm objects for the recipe, in the recipe's order but ChannelsLast last, with settings in
    samples converted to steps at ``global_batch_size``; a rejected value names its key."""
    validate_algorithms(algorithms)
    built = []
    enabled = enabled_algorithms(algorithms)
    # ChannelsLast converts the weights that exist when it runs; convolutions that Factorize, SqueezeExcite or
    # BlurPool add after it would stay in NCHW, so it runs after them whatever the recipe's order.
    if "channels_last" in enabled:
        enabled["channels_last"] = enabled.pop("channels_last")
    for name, arguments in enabled.items():
        try:
            built.append(ALGORITHMS[name](**in_steps(name, arguments, global_batch_size)))
        except (ValueError, TypeError) as error:
            raise UsageError(
                f"'algorithms.{name}' was rejected by {_owner(ALGORITHMS[name])}: {error}"
            ) from error
    return built
