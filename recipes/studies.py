"""The study language: an ablation study file names a base recipe, the variants to compare with it and the seeds.

A study is data, like a recipe: this module declares its keys (``StudyConfig``), loads a file strictly (an unknown
key, a duplicate variant name or a reserved key fails naming the file and the variant) and expands the
``one_at_a_time`` helper into ordinary variants. Whether each variant's overrides make a valid recipe is checked by
the recipe loader itself, for every variant before any run starts (``tools.ablate``).

    name: digits                      # default: the file's name
    recipe: smoke                     # a recipe name in recipes/ or a path
    overrides: {max_duration: 4ep}    # applied to every run, the base included
    seeds: [0, 1, 2]
    variants:                         # name -> recipe overrides (dotted keys)
      conv_head: {model.head: conv1x1}
    one_at_a_time:
      add: {label_smoothing: {smoothing: 0.1}, blurpool: {}}   # plus_<name>: the algorithm switched on
      remove: [mixup]                                          # no_<name>: the base's algorithm switched off
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from recipes.errors import UsageError, suggest

# The name of the variant every other is compared with: the base recipe plus the shared overrides.
BASE_VARIANT = "base"
# Keys the study sets for each run (its seed, its name and folder, autoresume so an interrupted run continues).
RESERVED_KEYS = ("seed", "run_name", "save_folder", "autoresume", "save_overwrite")
# Variant names become folder and run names.
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class OneAtATimeConfig:
    """Variants written for you, one per algorithm: the classic "base minus each" or "base plus each" ablation."""

    # Algorithms switched on in the base recipe; each gives a variant "no_<name>" with it switched off.
    remove: list[str] = field(default_factory=list)
    # Algorithms the base does not use, each mapped to its arguments ({} for defaults); each gives "plus_<name>".
    add: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyConfig:
    """An ablation study: every variant trained once per seed as an ordinary run, then compared with the base."""

    # One line saying what the study asks.
    description: str = ""
    # The study's name (results folder, run names, the wandb group); null: the file's name.
    name: str | None = None
    # The base recipe: a name in recipes/ or a YAML path.
    recipe: str = "smoke"
    # Recipe overrides (dotted keys) applied to every run, the base included.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Variant name -> recipe overrides (dotted keys), applied after the shared ones.
    variants: dict[str, Any] = field(default_factory=dict)
    one_at_a_time: OneAtATimeConfig = field(default_factory=OneAtATimeConfig)
    # Every variant runs once per seed (the recipe's `seed`), the same seeds for all, so differences are paired.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Where the runs and results go; "{name}" is the study's name.
    output: str = "runs/ablations/{name}"
    # The metric compared (a validation metric every run's summary.json holds).
    metric: str = "val/acc1"
    # The confidence of the interval on each variant's difference from the base; the verdict reads it.
    confidence: float = 0.95


@dataclass(frozen=True)
class Variant:
    """One variant of a study: its name and the recipe overrides (``key=value`` strings) that make it."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """A loaded, expanded study: what ``tools.ablate`` runs."""

    path: Path
    name: str
    description: str
    recipe: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    output: Path
    metric: str
    confidence: float


def as_overrides(values: dict[str, Any]) -> tuple[str, ...]:
    """``{key: value}`` as the ``key=value`` strings train.py takes; values written as JSON, which omegaconf's
    dotlist parses back to the same value (null, numbers, strings, lists, mappings)."""
    return tuple(f"{key}={json.dumps(value)}" for key, value in values.items())


def _read(path: Path) -> DictConfig:
    """The study file merged into ``StudyConfig``: unknown keys and wrong types fail naming the file."""
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError as error:
        raise UsageError(f"Study file {path} does not exist.") from error
    except Exception as error:
        # omegaconf's YAML loader refuses duplicate keys, a repeated variant name among them.
        first = str(error).replace("\n", " ")
        raise UsageError(
            f"Study file {path} is not valid YAML: {first}. Every variant needs its own name."
        ) from error
    if not isinstance(raw, DictConfig):
        raise UsageError(f"Study file {path} must be a mapping of keys to values.")
    try:
        return OmegaConf.merge(OmegaConf.structured(StudyConfig), raw)
    except ConfigKeyError as error:
        known = [name for name in StudyConfig.__dataclass_fields__]
        if str(error.full_key).startswith("one_at_a_time."):
            known = list(OneAtATimeConfig.__dataclass_fields__)
        leaf = str(error.full_key).split(".")[-1]
        raise UsageError(
            f"Unknown key '{error.full_key}' in study file {path}.{suggest(leaf, known)} "
            f"Valid keys: {', '.join(known)}."
        ) from error
    except (ValidationError, OmegaConfBaseException) as error:
        raise UsageError(
            f"Bad value in study file {path}: {str(error).splitlines()[0]} (key '{error.full_key}')."
        ) from error


def _overrides(where: str, values: Any) -> dict[str, Any]:
    """A variant's (or the shared) overrides as a plain mapping, refusing the keys the study sets itself."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(
            f"{where} must be a mapping of recipe keys to values (e.g. {{algorithms.mixup: null}}), "
            f"not {values!r}."
        )
    for key in values:
        if str(key).split(".")[0] in RESERVED_KEYS:
            raise UsageError(
                f"{where} sets '{key}', which the study sets for every run ({', '.join(RESERVED_KEYS)}); "
                "remove it (seeds go in the study's `seeds` list)."
            )
    return values


def _expand_one_at_a_time(helper: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """``remove: [x]`` -> ``no_x: {algorithms.x: null}``; ``add: {x: args}`` -> ``plus_x: {algorithms.x: args}``."""
    variants: dict[str, dict[str, Any]] = {}
    for name in helper.get("remove") or []:
        variants[f"no_{name}"] = {f"algorithms.{name}": None}
    for name, arguments in (helper.get("add") or {}).items():
        if arguments is not None and not isinstance(arguments, dict):
            raise UsageError(
                f"'one_at_a_time.add.{name}' in study file {path} must be the algorithm's arguments "
                f"({{}} for its defaults), not {arguments!r}."
            )
        variants[f"plus_{name}"] = {f"algorithms.{name}": arguments or {}}
    return variants


def load_study(path: str | Path, extra_overrides: list[str] | None = None) -> Study:
    """Load and expand a study file; ``extra_overrides`` (``key=value``, from the command line) apply to every run
    after the study's shared overrides and before each variant's own. The variants' recipes are checked by
    ``tools.ablate.check_study``."""
    path = Path(path)
    extra = tuple(extra_overrides or ())
    _overrides("The command line", {item.split("=", 1)[0]: None for item in extra})
    config = OmegaConf.to_container(_read(path), resolve=True)
    name = config["name"] or path.stem
    if not VARIANT_NAME.match(name):
        raise UsageError(f"Study name '{name}' in {path} must be letters, digits, '_', '-' or '.'.")
    shared = _overrides(f"'overrides' in study file {path}", config["overrides"])
    written = {str(key): value for key, value in config["variants"].items()}
    expanded = _expand_one_at_a_time(config["one_at_a_time"], path)
    common = as_overrides(shared) + extra
    variants = [Variant(BASE_VARIANT, common)]
    for variant_name, values in [*written.items(), *expanded.items()]:
        where = f"Variant '{variant_name}' in study file {path}"
        if variant_name == BASE_VARIANT:
            raise UsageError(
                f"{where}: '{BASE_VARIANT}' is the base recipe itself; give the variant another name."
            )
        if not VARIANT_NAME.match(variant_name):
            raise UsageError(f"{where}: a variant name must be letters, digits, '_', '-' or '.'.")
        if any(variant.name == variant_name for variant in variants):
            raise UsageError(
                f"{where} is defined twice (one_at_a_time writes 'no_<algorithm>' and 'plus_<algorithm>'); "
                "rename one."
            )
        variants.append(Variant(variant_name, common + as_overrides(_overrides(where, values))))
    if len(variants) < 2:
        raise UsageError(f"Study file {path} has no variants: add some under 'variants' or 'one_at_a_time'.")
    seeds = config["seeds"]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(
            f"'seeds' in study file {path} must list distinct seeds, e.g. [0, 1, 2]; got {seeds}."
        )
    if not 0 < config["confidence"] < 1:
        raise UsageError(
            f"'confidence' in study file {path} is {config['confidence']}; give a fraction such as 0.95."
        )
    return Study(
        path=path,
        name=name,
        description=config["description"],
        recipe=config["recipe"],
        variants=tuple(variants),
        seeds=tuple(int(seed) for seed in seeds),
        output=Path(config["output"].replace("{name}", name)),
        metric=config["metric"],
        confidence=float(config["confidence"]),
    )
