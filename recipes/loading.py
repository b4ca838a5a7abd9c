"""Load a recipe: resolve its file, merge its bases and the command-line overrides, validate strictly.

Validation happens here, before any model or data is built, so a typo fails in a second instead of at the first
checkpoint. Errors name the full key path and suggest the nearest valid key.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from recipes.durations import parse_time
from recipes.errors import UsageError, suggest
from recipes.schema import DataSource, RecipeConfig, Task

RECIPES_DIR = Path(__file__).resolve().parent
DEFAULT_RECIPE = RECIPES_DIR / "smoke.yaml"
# The resolved recipe a run saves beside its checkpoints, which evaluate.py and the exports read back.
SAVED_RECIPE = "recipe.yaml"
# Key that lists the recipes (relative to the file naming them) this one builds on, merged first.
BASE_KEY = "base"

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
        f"Recipe '{name}' not found.{suggest(Path(str(name)).stem, available_recipes())} Pass a YAML file path "
        f"or one of: {', '.join(available_recipes())}."
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
        raise UsageError(
            f"Bad value for '{error.full_key}' in {source}: {message}.{_suggest_member(error)}"
        ) from error
    except OmegaConfBaseException as error:
        raise UsageError(f"Invalid recipe {source}: {str(error).splitlines()[0]}") from error


def _suggest_member(error: ValidationError) -> str:
    """For a key that takes one of a few names (a ``Choice`` in the schema), the nearest one to what was given."""
    node = OmegaConf.structured(RecipeConfig)
    try:
        for part in str(error.full_key).split("."):
            node = node._get_node(part)
    except (AttributeError, KeyError, OmegaConfBaseException):
        return ""
    members = getattr(node, "enum_type", None)
    if members is None or not issubclass(members, Enum):
        return ""
    return suggest(str(error.value), [member.name for member in members])


def _check_times_and_batches(config: DictConfig) -> None:
    """Check the Composer time strings and the batch settings the schema's types cannot express."""
    for key in TIME_KEYS:
        parse_time(OmegaConf.select(config, key), key)
    length = parse_time(config.max_duration, "max_duration")
    if length.value <= 0:
        raise UsageError(
            f"'max_duration' is '{config.max_duration}', which trains nothing; give a positive length such as "
            "'10ep' or '500ba'."
        )
    microbatch = config.device_train_microbatch_size
    if isinstance(microbatch, str) and microbatch != "auto":
        raise UsageError(
            f"'device_train_microbatch_size' is '{microbatch}'; use an integer, 'auto' (GPU only) or null."
        )
    if config.global_batch_size <= 0:
        raise UsageError(f"'global_batch_size' must be positive, not {config.global_batch_size}.")


def load_recipe(name: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Load, merge and validate a recipe against the schema; every error names the key path and the fix.

    The sections that name things from a registry (``algorithms``) are validated by their registry, which
    ``training.preflight.load_run_recipe`` calls: this module imports nothing of the project beyond recipes/.
    """
    path = resolve_recipe_path(name)
    config = _merge_into_schema(_load_yaml(path), str(path))
    if overrides:
        config = _merge_into_schema(
            OmegaConf.merge(OmegaConf.to_container(config), _parse_overrides(overrides)),
            f"{path} with overrides {' '.join(overrides)}",
        )
    _check_times_and_batches(config)
    return config


def recipe_to_yaml(config: DictConfig) -> str:
    """The resolved recipe as YAML, every key: what runs save beside checkpoints and ``--print-config --all`` shows."""
    return OmegaConf.to_yaml(config)


def recipe_in_use_to_yaml(config: DictConfig) -> str:
    """The resolved recipe as YAML without what this run does not read: what ``--print-config`` shows.

    Left out, each only where the run ignores it: ``moco`` and ``data.two_views`` outside task=moco_v3,
    ``data.streaming`` outside data.source=streaming; a switched-off ``profiler`` or ``doctor`` shows only
    ``enabled: false``. Loaded back as a recipe, the output gives the same run: what is left out is either
    unread by it or filled in again by the schema.
    """
    recipe = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    if config.task != Task.moco_v3:
        del recipe["moco"], recipe["data"]["two_views"]
    if config.data.source != DataSource.streaming:
        del recipe["data"]["streaming"]
    for section in ("profiler", "doctor"):
        if not config[section].enabled:
            recipe[section] = {"enabled": False}
    return OmegaConf.to_yaml(recipe)
