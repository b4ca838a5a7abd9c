"""Train ResNet-50 with a phase recipe.

    python train.py [RECIPE] [key=value ...] [--print-config]
    python train.py [RECIPE] [key=value ...] --plan
    python train.py [RECIPE] [key=value ...] --find-lr [--min-lr A --max-lr B --iterations N] [--apply]

RECIPE is a YAML file or a name in recipes/ (default: recipes/smoke.yaml); overrides use omegaconf dotlist syntax,
e.g. ``optimizer.base_lr=0.05 data.path=/data/imagenet``. This file only wires the builders together.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from composer import Evaluator, Trainer
from composer.utils import dist, reproducibility
from omegaconf import DictConfig, OmegaConf

from algorithms.checkpointing import build_checkpointing, check_autoresume
from algorithms.lr_range_test import RangeTestSettings, run_range_test, write_applied_recipe
from algorithms.optimization import build_optimizer, build_scheduler
from algorithms.preemption import PREEMPTED_EXIT_STATUS, ExactResume, Preempted, Preemption
from algorithms.registry import build_algorithms
from algorithms.run_logging import VALIDATION_LABEL, build_callbacks, build_loggers
from algorithms.run_summary import build_summary, format_summary, write_summary
from algorithms.training_doctor import (
    DOCTOR_STOPPED_EXIT_STATUS,
    TrainingStopped,
    build_doctor,
    doctor_summary,
    raise_if_stopped,
    weights_are_finite,
)
from data import build_data
from data.resumable_sampler import skips_seen_batches
from model import build_model
from recipes.checks import RecipeFacts, check_before_training
from recipes.errors import UsageError, user_message
from recipes.findings import append_findings
from recipes.loading import load_recipe, recipe_to_yaml, resolve_recipe_path
from recipes.planning import plan_run
from recipes.runtime import agree_on_run_name, resolve_runtime, silence_expected_warnings, start_distributed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: an optional recipe, then key=value overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", nargs="?", help="recipe YAML path or name in recipes/ (default: smoke)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optimizer.base_lr=0.05")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument(
        "--plan", action="store_true", help="print batch, steps, LR, memory, time and cost; do not train"
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
    if args.recipe and "=" in args.recipe:
        args.overrides.insert(0, args.recipe)
        args.recipe = None
    return args


def say(message: str) -> None:
    """Print once, from global rank 0."""
    if dist.get_global_rank() == 0:
        print(message, flush=True)


def run(config: DictConfig, recipe_path: Path) -> dict:
    """Build everything the recipe names, train, evaluate, and write the run outputs."""
    started = time.perf_counter()
    runtime = resolve_runtime(config)
    start_distributed(runtime.device)
    reproducibility.seed_all(config.seed)
    check_autoresume(config)
    run_name = agree_on_run_name(config.run_name, recipe_path.stem)
    config.run_name = run_name
    save_folder = config.save_folder.replace("{run_name}", run_name)
    output_folder = Path("runs") / run_name if save_folder.startswith("s3://") else Path(save_folder)
    for note in runtime.notes:
        say(f"note: {note}")
    checkpoints = build_checkpointing(config, run_name, output_folder)
    for line in checkpoints.notes:
        say(line)

    data = build_data(config, device=runtime.device, bad_image_list=output_folder / "bad_images.tsv")
    facts = RecipeFacts(runtime.world_size, runtime.device, data.num_classes, len(data.train.dataloader))
    recipe_warnings = check_before_training(config, facts)
    for finding in recipe_warnings:
        say(finding.line())
    if dist.get_global_rank() == 0:
        append_findings(output_folder, recipe_warnings)
    model = build_model(config.model, data.num_classes)
    optimizer, lr_plan = build_optimizer(model, config.optimizer, config.global_batch_size)
    scheduler = build_scheduler(config.scheduler, optimizer, config.max_duration, len(data.train.dataloader))
    algorithms = build_algorithms(config.algorithms)
    doctor = build_doctor(config, data.num_classes, output_folder, len(data.train.dataloader))
    recipe = OmegaConf.to_container(config, resolve=True)
    loggers, metrics_file = build_loggers(
        config.logging, output_folder, run_name, recipe, resume=config.autoresume
    )
    say(
        f"run {run_name}: {data.train_size} training / {data.val_size} validation images, "
        f"{data.num_classes} classes, {runtime.world_size} process(es) x batch {runtime.per_device_batch_size}"
    )
    say(lr_plan.describe())
    if dist.get_global_rank() == 0:
        output_folder.mkdir(parents=True, exist_ok=True)
        (output_folder / "recipe.yaml").write_text(recipe_to_yaml(config), encoding="utf-8")

    preemption = Preemption()
    trainer = Trainer(
        model=model,
        train_dataloader=data.train,
        eval_dataloader=Evaluator(label=VALIDATION_LABEL, dataloader=data.val),
        max_duration=config.max_duration,
        eval_interval=config.eval_interval,
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        algorithms=algorithms,
        loggers=[*loggers, *checkpoints.loggers],
        callbacks=[*build_callbacks(runtime.device), preemption, ExactResume(), checkpoints.saver, *doctor],
        run_name=run_name,
        progress_bar=config.logging.progress_bar,
        log_to_console=config.logging.log_to_console,
        console_log_interval=config.logging.console_log_interval,
        load_path=checkpoints.load_path,
        device=runtime.device,
        precision=runtime.precision,
        device_train_microbatch_size=runtime.device_train_microbatch_size,
        compile_config=runtime.compile_config,
        seed=config.seed,
        deterministic_mode=config.deterministic,
        spin_dataloaders=not skips_seen_batches(data.train.dataloader),
    )
    trainer.fit()
    preemption.raise_if_preempted(trainer, save_folder, autoresume=config.autoresume)
    weights_finite = weights_are_finite(trainer.state.model)
    if weights_finite:
        trainer.eval()
    else:
        say("note: the weights are not finite (NaN or Inf), so the end evaluation is skipped")
    summary = build_summary(
        trainer,
        metrics_file,
        run_name=run_name,
        recipe_path=str(recipe_path),
        lr_plan=lr_plan,
        algorithms=config.algorithms,
        wall_time_s=time.perf_counter() - started,
        extra={
            "num_classes": data.num_classes,
            "train_images": data.train_size,
            "val_images": data.val_size,
            "save_folder": save_folder,
            "device": runtime.device,
            "precision": runtime.precision,
            "world_size": runtime.world_size,
            "per_device_batch_size": runtime.per_device_batch_size,
            "device_train_microbatch_size": runtime.device_train_microbatch_size,
            "bad_images": len(data.bad_images.entries()),
            **doctor_summary(doctor, trainer.state, weights_finite=weights_finite),
        },
    )
    trainer.close()
    write_summary(output_folder, summary)
    say(format_summary(summary))
    if (bad_images := data.bad_images.report()) is not None:
        say(bad_images)
    say(f"outputs in {output_folder}/ (checkpoints, recipe.yaml, metrics.jsonl, summary.json)")
    raise_if_stopped(doctor)
    return summary


def find_learning_rate(config: DictConfig, recipe_path: Path, args: argparse.Namespace) -> None:
    """``--find-lr``: the LR range test instead of training; with ``--apply``, a recipe copy at its suggestion."""
    settings = RangeTestSettings.for_optimizer(
        config.optimizer.name, args.min_lr, args.max_lr, args.iterations
    )
    result = run_range_test(config, recipe_path, settings)
    say(result.report())
    if args.apply and dist.get_global_rank() == 0:
        path = write_applied_recipe(config, result)
        say(f"wrote {path} (the recipe with the moderate base_lr); train it with: python train.py {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit status 0 on success, 2 on a usage error (with the message, not a traceback), 75 when
    stopped by SIGTERM after saving a checkpoint (relaunch to resume; scripts/run_until_done.sh does), 3 when
    the training doctor stopped a run on a fatal finding (a NaN loss: the finding is printed and in
    findings.jsonl, the state saved for inspection; relaunching unchanged would fail the same way)."""
    args = parse_args(argv)
    silence_expected_warnings()
    try:
        config = load_recipe(args.recipe, args.overrides)
        if args.print_config:
            print(recipe_to_yaml(config), end="")
            return 0
        if args.plan:
            plan = plan_run(config, resolve_recipe_path(args.recipe))
            print(plan.report())
            return 2 if plan.errors else 0
        if args.find_lr:
            find_learning_rate(config, resolve_recipe_path(args.recipe), args)
            return 0
        run(config, resolve_recipe_path(args.recipe))
    except UsageError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    except Preempted as stop:
        say(str(stop))
        return PREEMPTED_EXIT_STATUS
    except TrainingStopped as stop:
        say(str(stop))
        return DOCTOR_STOPPED_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
