"""Evaluate a checkpoint on the validation set of its recipe's data.

    python evaluate.py --checkpoint CKPT [--recipe RECIPE] [key=value ...] [--output FILE]
                       [--export DIR [--export-weights auto|ema|raw] [--no-eval]]

Without --recipe, the ``recipe.yaml`` that train.py saved beside the checkpoint is used, so the checkpoint alone
is enough; overrides such as ``data.path=DIR`` apply on top. An EMA run is evaluated twice, with the EMA weights
(what train.py reported) and with the raw training weights. ``--export DIR`` then writes torchvision weights,
an ONNX model checked with onnxruntime, the class names and the preprocessing (``tools/export.py``);
``--no-eval`` exports without evaluating. This file only wires the builders together.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recipes.errors import UsageError, user_message
from recipes.loading import SAVED_RECIPE


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the checkpoint, then export it when asked (checking the export folder first: evaluation can
    take minutes). The training stack (torch, Composer: seconds to import) loads here, so ``--help`` is quick."""
    from composer.utils import dist

    from tools.export import check_export_folder, export_checkpoint
    from training.evaluation import evaluate_checkpoint

    if args.no_eval and args.export is None:
        raise UsageError("--no-eval skips the evaluation, which leaves nothing to do without --export DIR.")
    if args.export is not None:
        check_export_folder(args.export)
    evaluation = evaluate_checkpoint(
        Path(args.checkpoint), args.recipe, args.overrides, skip_eval=args.no_eval
    )
    results = evaluation.results
    if args.export is not None and dist.get_global_rank() == 0:
        results["export"] = export_checkpoint(
            args.export,
            evaluation.config,
            evaluation.states,
            evaluation.class_names,
            weights=args.export_weights,
            checkpoint=str(args.checkpoint),
            evaluations=results["by_weights"],
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit status 0 on success, 2 on a usage error (with the message, not a traceback)."""
    args = parse_args(argv)
    from composer.utils import dist

    from callbacks.ranks import say
    from tools.export import describe_export
    from training.runtime import silence_expected_warnings

    silence_expected_warnings()
    try:
        results = run(args)
    except UsageError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    for name, metrics in results["by_weights"].items():
        line = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items())
        say(f"{name} weights: {line}  ({results['images']} images)")
    if "export" in results:
        say(describe_export(args.export, results["export"]))
    if args.output and dist.get_global_rank() == 0:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
