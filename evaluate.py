"""Evaluate a checkpoint on the validation set of its recipe's data.

    python evaluate.py --checkpoint CKPT [--recipe RECIPE] [key=value ...] [--output FILE]
                       [--export DIR [--export-weights auto|ema|raw] [--no-eval]]

Without --recipe, the ``recipe.yaml`` that train.py saved beside the checkpoint is used, so the checkpoint alone
is enough; overrides such as ``data.path=DIR`` apply on top. An EMA run is evaluated twice, with the EMA weights
(what train.py reported) and with the raw training weights. ``--export DIR`` then writes torchvision weights,
an ONNX model checked with onnxruntime, the class names and the preprocessing (``algorithms/export.py``);
``--no-eval`` exports without evaluating. This file only wires the builders together.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from composer import Evaluator, Trainer
from composer.utils import dist

from algorithms.export import check_export_folder, describe_export, export_checkpoint
from algorithms.run_logging import VALIDATION_LABEL, validation_metrics
from data import build_data
from model import WeightSet, build_model_for_checkpoint, extract_model_states, read_checkpoint
from recipes.errors import UsageError, user_message
from recipes.loading import load_recipe
from recipes.runtime import resolve_runtime, silence_expected_warnings, start_distributed

SAVED_RECIPE = "recipe.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: the checkpoint, an optional recipe, key=value overrides and an output file."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="Composer checkpoint or plain state dict (.pt)")
    parser.add_argument("--recipe", help=f"recipe it was trained with (default: {SAVED_RECIPE} beside it)")
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument(
        "--export", type=Path, metavar="DIR", help="also write the weights (.pt, .safetensors, ONNX) to DIR"
    )
    parser.add_argument(
        "--export-weights",
        choices=("auto", "ema", "raw"),
        default="auto",
        help="weight set to export (auto: EMA's when the run has them, as reported; else the only one)",
    )
    parser.add_argument("--no-eval", action="store_true", help="with --export: export without evaluating")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. data.path=DIR")
    return parser.parse_args(argv)


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
    trainer.close()
    return results


def run(
    checkpoint: Path,
    recipe: str | None,
    overrides: list[str],
    export: Path | None = None,
    export_weights: WeightSet = "auto",
    skip_eval: bool = False,
) -> dict[str, Any]:
    """Evaluate every weight set in the checkpoint (the headline numbers are the ones train.py reported), then export."""
    if not checkpoint.exists():
        raise UsageError(f"Checkpoint {checkpoint} does not exist.")
    if skip_eval and export is None:
        raise UsageError("--no-eval skips the evaluation, which leaves nothing to do without --export DIR.")
    if export is not None:
        check_export_folder(export)  # before the evaluation, which can take minutes
    recipe_path = recipe_for(checkpoint, recipe)
    config = load_recipe(recipe_path, overrides)
    runtime = resolve_runtime(config)
    start_distributed(runtime.device)
    for note in runtime.notes:
        print(f"note: {note}")
    data = build_data(config, train=False, device=runtime.device)
    states = extract_model_states(read_checkpoint(checkpoint))
    weight_sets = ["ema", "raw"] if "ema" in states else ["model"]
    by_weights = {}
    for name in [] if skip_eval else weight_sets:
        model = build_model_for_checkpoint(
            config, data.num_classes, states[name], source=f"checkpoint {checkpoint}"
        )
        by_weights[name] = evaluate_weights(model, data.val, runtime.device, runtime.precision)
    if dist.get_global_rank() == 0 and (bad_images := data.bad_images.report()) is not None:
        print(bad_images)
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
    if export is not None and dist.get_global_rank() == 0:
        results["export"] = export_checkpoint(
            export,
            config,
            states,
            data.class_names,
            weights=export_weights,
            checkpoint=str(checkpoint),
            evaluations=by_weights,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit status 0 on success, 2 on a usage error (with the message, not a traceback)."""
    args = parse_args(argv)
    silence_expected_warnings()
    try:
        results = run(
            Path(args.checkpoint), args.recipe, args.overrides, args.export, args.export_weights, args.no_eval
        )
    except UsageError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    if dist.get_global_rank() == 0:
        for name, metrics in results["by_weights"].items():
            line = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items())
            print(f"{name} weights: {line}  ({results['images']} images)")
        if "export" in results:
            print(describe_export(args.export, results["export"]))
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
