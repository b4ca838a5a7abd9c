"""Evaluate a checkpoint on its recipe's validation data with Composer's own eval loop, every weight set it
holds (EMA and raw for an EMA run).

The recipe it was trained with is saved beside it (``recipe.yaml``), so the checkpoint alone is enough; the
metrics are the ones train.py reports, computed the same way, so the numbers match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composer import Evaluator, Trainer
from omegaconf import DictConfig

from callbacks.metric_names import VALIDATION_LABEL, validation_metrics
from callbacks.ranks import say
from data import build_data
from recipes.errors import UsageError
from recipes.loading import SAVED_RECIPE
from training.preflight import load_run_recipe
from training.runtime import close_trainer, resolve_runtime, start_distributed
from training.weights import ModelStates, build_model_for_checkpoint, extract_model_states, read_checkpoint


def recipe_for(checkpoint: Path, recipe: str | None) -> Path | str:
    """The recipe named on the command line, or the one saved beside the checkpoint."""
    if recipe:
        return recipe
    saved = checkpoint.parent / SAVED_RECIPE
    if not saved.is_file():
        raise UsageError(
            f"No {SAVED_RECIPE} beside {checkpoint}; pass the recipe it was trained with: --recipe RECIPE."
        )
    return saved


def evaluate_weights(model: Any, dataloader: Any, device: str, precision: str) -> dict[str, float]:
    """Composer's own eval loop and metrics, as train.py uses them, so the numbers match exactly."""
    trainer = Trainer(
        model=model,
        eval_dataloader=Evaluator(label=VALIDATION_LABEL, dataloader=dataloader),
        device=device,
        precision=precision,
        progress_bar=False,
        loggers=[],
    )
    trainer.eval()
    results = validation_metrics(trainer.state)
    close_trainer(trainer)
    return results


@dataclass
class CheckpointEvaluation:
    """The results (what ``evaluate.py --output`` writes) and what an export of the checkpoint is made from."""

    results: dict[str, Any]
    config: DictConfig
    states: ModelStates
    class_names: list[str]


def checkpoints_beside(checkpoint: Path) -> str:
    """' Checkpoints in FOLDER: a.pt, b.pt.' when the missing checkpoint's folder exists and holds some, so a
    mistyped name or a run named otherwise (train.py's default smoke-<timestamp>) is one copy away."""
    folder = checkpoint.parent
    found = sorted(path.name for path in folder.glob("*.pt")) if folder.is_dir() else []
    if found:
        return f" Checkpoints in {folder}: {', '.join(found)}."
    runs = (
        sorted(path.name for path in folder.parent.glob("*") if path.is_dir())
        if folder.parent.is_dir()
        else []
    )
    return f" {folder} does not exist; runs in {folder.parent}: {', '.join(runs)}." if runs else ""


def evaluate_checkpoint(
    checkpoint: Path, recipe: str | None, overrides: list[str], *, skip_eval: bool = False
) -> CheckpointEvaluation:
    """Evaluate every weight set in the checkpoint; the headline numbers are the ones train.py reported."""
    if not checkpoint.exists():
        raise UsageError(f"Checkpoint {checkpoint} does not exist.{checkpoints_beside(checkpoint)}")
    recipe_path = recipe_for(checkpoint, recipe)
    config = load_run_recipe(recipe_path, overrides)
    runtime = resolve_runtime(config)
    start_distributed(runtime)
    for note in runtime.notes:
        say(f"note: {note}")
    data = build_data(config, train=False, device=runtime.device)
    states = extract_model_states(read_checkpoint(checkpoint))
    weight_sets = ["ema", "raw"] if "ema" in states else ["model"]
    by_weights = {}
    for name in [] if skip_eval else weight_sets:
        model = build_model_for_checkpoint(
            config, data.num_classes, states[name], source=f"checkpoint {checkpoint}"
        )
        by_weights[name] = evaluate_weights(model, data.val, runtime.device, runtime.precision)
    if (bad_images := data.bad_images.report()) is not None:
        say(bad_images)
    headline = weight_sets[0]
    results = {
        "checkpoint": str(checkpoint),
        "recipe": str(recipe_path),
        "images": data.val_size,
        "num_classes": data.num_classes,
        "weights_reported": headline,
        "bad_images": data.bad_images.entries(),
        **by_weights.get(headline, {}),
        "by_weights": by_weights,
    }
    return CheckpointEvaluation(results, config, states, list(data.class_names))
