"""Load a recipe: resolve its file, merge its bases and the command-line overrides, validate strictly.

Validation happens here, before any model or data is built, so a typo fails in a second instead of at the first
checkpoint. Errors name the full key path and suggest the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from recipes.errors import UsageError
from recipes.schema import RecipeConfig

RECIPES_DIR = Path(__file__).resolve().parent
DEFAULT_RECIPE = RECIPES_DIR / "smoke.yaml"
# Key that lists the recipes (relative to the file naming them) this one builds on, merged first.
BASE_KEY = "base"

CHOICES: dict[str, tuple[str, ...]] = {
    "precision": ("fp32", "amp_fp16", "amp_bf16"),
    "device": ("auto", "cpu", "gpu"),
    "model.head": ("fc", "conv1x1"),
    "optimizer.name": ("decoupled_sgdw", "decoupled_adamw"),
    "optimizer.lr_scaling": ("linear", "sqrt", "none"),
    "scheduler.name": ("cosine_warmup", "linear_warmup", "constant_warmup", "one_cycle"),
    "data.interpolation": ("bilinear", "bicubic", "nearest"),
    "data.pipeline": ("fast", "torchvision"),
    "data.on_bad_image": ("skip", "fail"),
    "logging.wandb_mode": ("online", "offline", "disabled"),
}
TIME_KEYS = (
    "max_duration",
    "save_interval",
    "eval_interval",
    "scheduler.t_warmup",
    "logging.console_log_interval",
)


def resolve_recipe_path(name: str | Path | None) -> Path:
    """Find a recipe by path, or by bare name in recipes/ (``colab`` finds ``recipes/colab.yaml``)."""
    if name is None:
        return DEFAULT_RECIPE
    candidates = [Path(name), RECIPES_DIR / str(name), RECIPES_DIR / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise UsageError(
        f"Recipe '{name}' not found. Pass a YAML file path or one of: {', '.join(available_recipes())}."
    )


def available_recipes() -> list[str]:
    """Names of the shipped phase recipes (files in recipes/ that are not shared bases)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _load_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """Read one recipe file with its bases merged underneath it (bases first, later ones win)."""
    if path in chain:
        raise UsageError(
            f"Recipe {path} builds on itself through '{BASE_KEY}': {' -> '.join(map(str, chain))}."
        )
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError as error:
        raise UsageError(f"Recipe {path} does not exist.") from error
    except Exception as error:
        raise UsageError(f"Recipe {path} is not valid YAML: {error}") from error
    if not isinstance(raw, DictConfig):
        raise UsageError(f"Recipe {path} must be a mapping of keys to values, not a {type(raw).__name__}.")
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, ListConfig | list):
        raise UsageError(f"'{BASE_KEY}' in {path} must be a file name or a list of file names.")
    merged = OmegaConf.create({})
    for base in bases:
        base_path = (path.parent / str(base)).resolve()
        if not base_path.is_file():
            raise UsageError(f"Recipe {path} names base '{base}', but {base_path} does not exist.")
        merged = OmegaConf.merge(merged, _load_yaml(base_path, (*chain, path)))
    return OmegaConf.merge(merged, raw)


def _parse_overrides(overrides: list[str]) -> DictConfig:
    """Turn ``key=value`` command-line arguments into a config (omegaconf dotlist syntax)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UsageError(
                f"Override '{item}' is not of the form key=value (for example optimizer.base_lr=0.05)."
            )
    try:
        return OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as error:
        raise UsageError(f"Could not parse overrides {overrides}: {error}") from error


def _schema_fields(key_path: str) -> list[str]:
    """Valid key names at the level of ``key_path`` (a dotted path), for suggestions."""
    node: Any = RecipeConfig
    for part in key_path.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields or not dataclasses.is_dataclass(fields[part].default_factory()):
            return []
        node = type(fields[part].default_factory())
    return [f.name for f in dataclasses.fields(node)]


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean X?' hint, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _merge_into_schema(config: DictConfig, source: str) -> DictConfig:
    """Merge user values into the typed schema, turning omegaconf errors into ones people can act on."""
    schema = OmegaConf.structured(RecipeConfig)
    try:
        return OmegaConf.merge(schema, config)
    except ConfigKeyError as error:
        full_key = str(error.full_key)
        leaf = full_key.split(".")[-1]
        known = _schema_fields(full_key)
        raise UsageError(
            f"Unknown key '{full_key}' in {source}.{suggest(leaf, known)}"
            + (f" Valid keys here: {', '.join(known)}." if known else "")
        ) from error
    except ValidationError as error:
        message = str(error).splitlines()[0]
        raise UsageError(f"Bad value for '{error.full_key}' in {source}: {message}.") from error
    except OmegaConfBaseException as error:
        raise UsageError(f"Invalid recipe {source}: {str(error).splitlines()[0]}") from error


def _check_choices_and_times(config: DictConfig) -> None:
    """Check the string keys that take one of a few values, and the Composer time strings."""
    from composer.core import Time

    for key, allowed in CHOICES.items():
        value = OmegaConf.select(config, key)
        if value not in allowed:
            raise UsageError(
                f"'{key}' is '{value}', which is not one of {', '.join(allowed)}.{suggest(value, allowed)}"
            )
    for key in TIME_KEYS:
        value = OmegaConf.select(config, key)
        try:
            Time.from_timestring(str(value)) if str(value) != "0" else None
        except ValueError as error:
            raise UsageError(
                f"'{key}' is '{value}', which is not a Composer time such as '90ep', '500ba' or '0.1dur'."
            ) from error
    microbatch = config.device_train_microbatch_size
    if isinstance(microbatch, str) and microbatch != "auto":
        raise UsageError(
            f"'device_train_microbatch_size' is '{microbatch}'; use an integer, 'auto' (GPU only) or null."
        )
    if config.global_batch_size <= 0:
        raise UsageError(f"'global_batch_size' must be positive, not {config.global_batch_size}.")


def load_recipe(name: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Load, merge and validate a recipe; every error names the key path and the fix."""
    from algorithms.registry import validate_algorithms
    from data import SOURCES

    path = resolve_recipe_path(name)
    config = _merge_into_schema(_load_yaml(path), str(path))
    if overrides:
        config = _merge_into_schema(
            OmegaConf.merge(OmegaConf.to_container(config), _parse_overrides(overrides)),
            f"{path} with overrides {' '.join(overrides)}",
        )
    _check_choices_and_times(config)
    if config.data.source not in SOURCES:
        known = sorted(SOURCES)
        raise UsageError(
            f"'data.source' is '{config.data.source}', which is not one of {', '.join(known)}."
            + suggest(config.data.source, known)
        )
    validate_algorithms(config.algorithms)
    _check_resizing(config)
    return config


def _check_resizing(config: DictConfig) -> None:
    """The two progressive resizings exclude each other, and the data-side one needs the fast pipeline."""
    from algorithms.registry import enabled_algorithms

    enabled = enabled_algorithms(config.algorithms)
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


def recipe_to_yaml(config: DictConfig) -> str:
    """The resolved recipe as YAML: what ``--print-config`` shows and what runs save beside checkpoints."""
    return OmegaConf.to_yaml(config)
