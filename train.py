"""Train ResNet-50 with a phase recipe.

    python train.py [RECIPE] [key=value ...] [--print-config [--all]]
    python train.py [RECIPE] [key=value ...] --plan [--calibrate-from RUN_FOLDER]
    python train.py [RECIPE] [key=value ...] --find-lr [--min-lr A --max-lr B --iterations N] [--apply]

RECIPE is a YAML file or a name in recipes/ (default: recipes/smoke.yaml); overrides use omegaconf dotlist syntax,
e.g. ``optimizer.base_lr=0.05 data.path=/data/imagenet``. This file only wires the builders together.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from recipes.errors import UsageError, user_message
from recipes.loading import load_recipe

if TYPE_CHECKING:
    from pathlib import Path

    from omegaconf import DictConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: an optional recipe, then key=value overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", nargs="?", help="recipe YAML path or name in recipes/ (default: smoke)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optimizer.base_lr=0.05")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved recipe as this run reads it (the sections it ignores left out) and exit",
    )
    parser.add_argument(
        "--all", action="store_true", help="--print-config: every key, the sections this run ignores too"
    )
    parser.add_argument(
        "--plan", action="store_true", help="print batch, steps, LR, memory, time and cost; do not train"
    )
    parser.add_argument(
        "--calibrate-from",
        metavar="RUN_FOLDER",
        help="--plan: use the throughput a finished run of this recipe on this hardware measured (its summary.json)",
    )
    parser.add_argument(
        "--find-lr", action="store_true", help="run the LR range test instead of training (runs/<name>/)"
    )
    parser.add_argument("--min-lr", type=float, help="--find-lr: first (applied) LR of the sweep")
    parser.add_argument("--max-lr", type=float, help="--find-lr: last (applied) LR of the sweep")
    parser.add_argument("--iterations", type=int, help="--find-lr: steps in the sweep (default 100)")
    parser.add_argument(
        "--apply", action="store_true", help="--find-lr: write a recipe copy with the moderate base_lr"
    )
    # Intermixed: overrides may come after a flag (`train.py smoke --plan global_batch_size=512`).
    args = parser.parse_intermixed_args(argv)
    range_test_flags = [args.min_lr, args.max_lr, args.iterations, args.apply or None]
    if not args.find_lr and any(flag is not None for flag in range_test_flags):
        parser.error("--min-lr, --max-lr, --iterations and --apply only apply to --find-lr; add --find-lr")
    if args.calibrate_from is not None and not args.plan:
        parser.error("--calibrate-from only applies to --plan; add --plan")
    if args.all and not args.print_config:
        parser.error("--all only applies to --print-config; add --print-config")
    if args.recipe and "=" in args.recipe:
        args.overrides.insert(0, args.recipe)
        args.recipe = None
    return args


def find_learning_rate(config: DictConfig, recipe_path: Path, args: argparse.Namespace) -> None:
    """``--find-lr``: the LR range test instead of training; with ``--apply``, a recipe copy at its suggestion."""
    from composer.utils import dist

    from callbacks.ranks import say
    from tools.lr_range_curve import RangeTestSettings
    from tools.lr_range_test import run_range_test, write_applied_recipe

    settings = RangeTestSettings.for_optimizer(
        config.optimizer.name, args.min_lr, args.max_lr, args.iterations
    )
    result = run_range_test(config, recipe_path, settings)
    say(result.report())
    if args.apply and dist.get_global_rank() == 0:
        path = write_applied_recipe(config, result)
        say(f"wrote {path} (the recipe with the moderate base_lr); train it with: python train.py {path}")


def run(args: argparse.Namespace) -> int:
    """Everything past the command line, with the training stack (torch, Composer: seconds to import) loaded
    here rather than at the top, so ``--help`` and a recipe's schema errors do not wait for it."""
    from callbacks.budget_guard import BUDGET_STOPPED_EXIT_STATUS, OverBudget
    from callbacks.curve_watch import WATCH_STOPPED_EXIT_STATUS, BelowReference
    from callbacks.preemption import PREEMPTED_EXIT_STATUS, Preempted
    from callbacks.ranks import say
    from callbacks.training_doctor import DOCTOR_STOPPED_EXIT_STATUS, TrainingStopped
    from recipes.loading import recipe_in_use_to_yaml, recipe_to_yaml, resolve_recipe_path
    from tools.planning import plan_run
    from training.optimization import applied_settings_comment
    from training.preflight import load_run_recipe
    from training.runtime import silence_expected_warnings
    from training.trainer import build_training

    silence_expected_warnings()
    try:
        config = load_run_recipe(args.recipe, args.overrides)
        if args.print_config:
            shown = recipe_to_yaml(config) if args.all else recipe_in_use_to_yaml(config)
            print(shown + applied_settings_comment(config), end="")
            return 0
        if args.plan:
            plan = plan_run(config, resolve_recipe_path(args.recipe), calibrate_from=args.calibrate_from)
            print(plan.report())
            return 2 if plan.errors else 0
        if args.find_lr:
            find_learning_rate(config, resolve_recipe_path(args.recipe), args)
            return 0
        build_training(config, resolve_recipe_path(args.recipe)).fit()
    except Preempted as stop:
        say(str(stop))
        return PREEMPTED_EXIT_STATUS
    except TrainingStopped as stop:
        say(str(stop))
        return DOCTOR_STOPPED_EXIT_STATUS
    except BelowReference as stop:
        say(str(stop))
        return WATCH_STOPPED_EXIT_STATUS
    except OverBudget as stop:
        say(str(stop))
        return BUDGET_STOPPED_EXIT_STATUS
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit status 0 on success, 2 on a usage error (with the message, not a traceback), 75 when
    stopped by SIGTERM after saving a checkpoint (relaunch to resume; scripts/run_until_done.sh does), 3 when
    the training doctor stopped a run on a fatal finding (a NaN loss: the finding is printed and in
    findings.jsonl, the state saved for inspection; relaunching unchanged would fail the same way), 4 when the
    curve watch stopped a run that fell watch.stop_below points under its reference (checkpointed), 5 when the
    budget guard stopped a run before it passed budget.max_usd or budget.max_hours (checkpointed; relaunch with
    the limit raised), or found it already spent at the start."""
    args = parse_args(argv)
    try:
        # The recipe against its schema before the training stack loads: a mistyped key fails in a second.
        load_recipe(args.recipe, args.overrides)
        return run(args)
    except UsageError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
