"""Benchmark what this project's stack costs a user: the whole run against a plain Composer script, and each step.

    python bench/stack_overhead.py [--output FILE] [--quick] [--repeats N] [--timed-steps N]

1. The whole run. ``train.py smoke`` as shipped (the recipe and its checks, the fast decode path, stable metric
   names, the doctor, preemption and exact resume, the metrics file, checkpoints, the summary) against
   ``bench/plain_composer.py``, the script a user would write with Composer alone (its Trainer, torchvision's
   ResNet-50, ImageFolder and transforms, the same optimizer, learning rate, batch, training crop, schedule and
   loader workers). Each is a fresh process timed from launch to exit: interpreter start and imports, data set-up,
   training, every evaluation, checkpoints, the summary. They run alternately, ``--repeats`` times each, the order
   swapped every time so that a busy machine or a cold cache slows both alike, on two data sets: the bundled digits
   and ten photographs cut into 32-px patches that no recipe was tuned on (``bench/photo_patches.py``). Times are
   the medians of the repeats, and the ratio ours / plain (the median of each back-to-back pair's) has a target of
   at most 1.03; repeat r trains both with seed 17 + r, so each top-1 is a mean over seeds, not one draw, and ours
   should be no lower. Beside them, each
   process's training seconds per step (Composer's clock: evaluation excluded, data waits and checkpoints included).
2. Per step. Our Trainer, as ``training.trainer.build_training`` builds it from the smoke recipe, and Composer's
   bare Trainer built by the same ``training.trainer.build_trainer`` on the same model, data loaders, optimizer and
   schedule with no callbacks, loggers or checkpoints of ours, trained in two threads that take turns one step at a
   time (a callback at the end of each step hands over and waits), so a busy machine slows both alike. A step's
   time runs from the moment a trainer gets its turn to the end of its step, data loading and every callback
   included; the figure is the median over the timed steps but the first and the last (one-time costs: workers
   starting, the final checkpoint; the JSON keeps every step), and the ratio has the same 1.03 target.
3. The same training. The two Trainers of part 2 each train two epochs on a subset of each data set (an evaluation
   and an epoch boundary included), one after the other and seeded alike, recording every step's loss. The stack
   only watches and writes, so the losses must match exactly and ours must score no lower; if not, the stack changed
   what is trained (an extra random draw, another data order or transform), the report says so and the command
   exits with status 1.

``--quick`` shrinks every part (resnet18; two epochs of three batches for the whole runs and the same-training
check, one repeat; six timed steps) so the test suite can run the whole bench in a few minutes; its figures are not
the ones to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from composer import Evaluator, Trainer
from composer.core import Callback, State
from composer.loggers import Logger

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.photo_patches import write_photo_patches  # noqa: E402
from callbacks.metric_names import VALIDATION_LABEL, batch_loss, validation_metrics  # noqa: E402
from data import build_data  # noqa: E402
from data.digits import ensure_digits_folder  # noqa: E402
from model import build_model  # noqa: E402
from training.optimization import build_optimizer, build_scheduler  # noqa: E402
from training.preflight import load_run_recipe  # noqa: E402
from training.trainer import build_trainer, build_training, start_run  # noqa: E402

TARGET_RATIO = 1.03
TIMED_STEPS = 40
QUICK_TIMED_STEPS = 6
REPEATS = 3
SEED = 17  # the smoke recipe's
DIGITS_VAL_FRACTION = 0.2  # the recipe's data.digits_val_fraction
# --quick: resnet18; two epochs of three batches, and 48 validation images, to train to the end.
QUICK_MODEL = ["model.name=resnet18"]
QUICK_TRAINING = ["data.subset_size=96", "data.val_subset_size=48", "max_duration=2ep"]
QUICK_PLAIN = ["--model", "resnet18", "--subset", "96", "48", "--epochs", "2"]
# The same-training check at full size: two epochs of 20 batches, 320 validation images.
CHECK_TRAINING = ["data.subset_size=640", "data.val_subset_size=320", "max_duration=2ep"]


# ---- 1. the whole run ----


def timed_process(command: list[str], log: Path) -> float:
    """Run ``command`` from the repository root, its output into ``log``; seconds from launch to exit."""
    with log.open("w") as output:
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
    if finished.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited with status {finished.returncode}:\n{tail}")
    return seconds


def run_ours(folder: Path, name: str, data: list[str], seed: int, quick: bool) -> dict[str, float]:
    """``train.py smoke`` as shipped, writing into ``folder/name``: wall seconds, top-1, training s/step."""
    save = folder / name
    command = [sys.executable, "train.py", "smoke", f"save_folder={save}", f"run_name={name}", f"seed={seed}"]
    seconds = timed_process(
        [*command, *data, *(QUICK_MODEL + QUICK_TRAINING if quick else [])], folder / f"{name}.log"
    )
    summary = json.loads((save / "summary.json").read_text())
    return {
        "s": seconds,
        "acc1": summary[f"{VALIDATION_LABEL}/acc1"],
        "s_per_step": summary["train_time_s"] / summary["steps"],
    }


def run_plain(folder: Path, name: str, images: Path, seed: int, quick: bool) -> dict[str, float]:
    """``bench/plain_composer.py`` on the ImageFolder ``images``: wall seconds, top-1, training s/step."""
    command = [sys.executable, "bench/plain_composer.py", str(images), "--seed", str(seed)]
    log = folder / f"{name}.log"
    seconds = timed_process([*command, *(QUICK_PLAIN if quick else [])], log)
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return {"s": seconds, "acc1": result["val/acc1"], "s_per_step": result["train_time_s"] / result["steps"]}


def whole_runs(folder: Path, label: str, repeats: int, quick: bool) -> dict[str, Any]:
    """Ours and plain on one data set, alternately, ``repeats`` times each (seed 17 + r); medians and means."""
    cache = folder / "cache"
    runs = []
    for repeat in range(repeats):
        seed = SEED + repeat
        if label == "digits":  # the folder ours writes on first use, written before either is timed
            images = ensure_digits_folder(cache, DIGITS_VAL_FRACTION, seed)
            data = [f"data.cache_dir={cache}"]
        else:
            images = folder / label
            data = [f"data.cache_dir={cache}", "data.source=imagefolder", f"data.path={images}"]
        order = ["ours", "plain"] if repeat % 2 == 0 else ["plain", "ours"]
        results = {}
        for side in order:
            name = f"{label}-{side}-{seed}"
            results[side] = (
                run_ours(folder, name, data, seed, quick)
                if side == "ours"
                else run_plain(folder, name, images, seed, quick)
            )
        run = {f"{side}_{key}": value for side in results for key, value in results[side].items()}
        run["ratio"] = run["ours_s"] / run["plain_s"]
        run["step_ratio"] = run["ours_s_per_step"] / run["plain_s_per_step"]
        runs.append({"seed": seed, **run})
    median = {
        key: statistics.median(run[key] for run in runs)
        for key in ("ours_s", "plain_s", "ratio", "ours_s_per_step", "plain_s_per_step", "step_ratio")
    }
    return {
        "ours_s": round(median["ours_s"], 1),
        "plain_s": round(median["plain_s"], 1),
        # Each repeat's pair ran back to back, so its ratio is the one a change in the machine's load spares.
        "ratio": round(median["ratio"], 4),
        "ours_acc1": round(statistics.mean(run["ours_acc1"] for run in runs), 4),
        "plain_acc1": round(statistics.mean(run["plain_acc1"] for run in runs), 4),
        "ours_s_per_step": round(median["ours_s_per_step"], 4),
        "plain_s_per_step": round(median["plain_s_per_step"], 4),
        "step_ratio": round(median["step_ratio"], 4),
        "runs": [
            {key: round(value, 4) if isinstance(value, float) else value for key, value in run.items()}
            for run in runs
        ],
    }


# ---- 2 and 3: our Trainer and Composer's bare one, in one process ----


class LossRecord(Callback):
    """Every step's loss as Composer logs it (a float already: no sync)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def batch_end(self, state: State, logger: Logger) -> None:
        self.losses.append(batch_loss(state))


class TakeTurns(Callback):
    """The last callback of a step: records the step's time, hands over to the other trainer, waits its turn.

    Once the other trainer is done (or failed), this one goes on alone.
    """

    def __init__(self, mine: threading.Semaphore, theirs: threading.Semaphore) -> None:
        self.mine, self.theirs = mine, theirs
        self.partner: TakeTurns | None = None
        self.seconds: list[float] = []
        # Set once this trainer is through Composer's set-up before training and waits for its first turn.
        self.waiting = threading.Event()
        self.done = threading.Event()
        self._started = 0.0

    def _wait_for_turn(self) -> None:
        if self.partner is not None and not self.partner.done.is_set():
            self.mine.acquire()
        self._started = time.perf_counter()

    def fit_start(self, state: State, logger: Logger) -> None:
        self.waiting.set()
        self._wait_for_turn()

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self.seconds.append(time.perf_counter() - self._started)
        self.theirs.release()
        self._wait_for_turn()

    def finish(self) -> None:
        """This trainer is done: the other one need not wait for it any more."""
        self.waiting.set()
        self.done.set()
        self.theirs.release()


def recipe(folder: Path, name: str, overrides: list[str]) -> Any:
    """The smoke recipe, writing into ``folder/name``, with ``overrides``."""
    settings = [f"save_folder={folder / name}", f"run_name={name}", "logging.progress_bar=false"]
    return load_run_recipe("smoke", [*settings, *overrides])


def bare_trainer(config: Any, name: str, callbacks: list[Callback]) -> Trainer:
    """Composer's Trainer on the recipe's model, data, optimizer and schedule, with evaluation, nothing of ours."""
    start = start_run(config, Path(f"{name}.yaml"))
    data = build_data(config, device=start.runtime.device)
    model = build_model(config.model, data.num_classes)
    optimizer, _ = build_optimizer(model, config.optimizer, config.global_batch_size)
    batches = len(data.train.dataloader)
    scheduler = build_scheduler(
        config.scheduler, optimizer, config.max_duration, batches, config.global_batch_size
    )
    return build_trainer(
        start,
        config,
        data,
        model,
        optimizer,
        eval_dataloader=Evaluator(label=VALIDATION_LABEL, dataloader=data.val),
        max_duration=config.max_duration,
        eval_interval=config.eval_interval,
        schedulers=scheduler,
        callbacks=callbacks,
        loggers=[],
        progress_bar=False,
    )


def steady_median(seconds: list[float]) -> float:
    """The median step, leaving out the first (workers starting, first allocations) and the last (ours saves the
    final checkpoint there): one-time costs, which the totals keep."""
    return statistics.median(seconds[1:-1] if len(seconds) > 2 else seconds)


def time_steps(folder: Path, steps: int, overrides: list[str]) -> dict[str, Any]:
    """Both trainers for ``steps`` steps, one step each in turn; median seconds per step and the ratio."""
    duration = [f"max_duration={steps}ba", *overrides]
    ours_turn, bare_turn = threading.Semaphore(1), threading.Semaphore(0)
    ours_clock, bare_clock = TakeTurns(ours_turn, bare_turn), TakeTurns(bare_turn, ours_turn)
    ours_clock.partner, bare_clock.partner = bare_clock, ours_clock
    ours = build_training(recipe(folder, "timed-ours", duration), Path("smoke.yaml"))
    ours.trainer.state.callbacks.append(ours_clock)  # last: after the checkpoint saver and the doctor
    bare = bare_trainer(recipe(folder, "timed-bare", duration), "timed-bare", [bare_clock])
    failures: list[BaseException] = []

    def train_bare() -> None:
        try:
            bare.fit()
        except BaseException as error:  # re-raised in the main thread
            failures.append(error)
        finally:
            bare_clock.finish()

    worker = threading.Thread(target=train_bare, name="bare-trainer")
    worker.start()
    bare_clock.waiting.wait()  # so its set-up does not run during our first step
    try:
        ours.trainer.fit()
    finally:
        ours_clock.finish()
        worker.join()
    if failures:
        raise failures[0]
    ours.trainer.close()
    bare.close()
    ours_step, bare_step = steady_median(ours_clock.seconds), steady_median(bare_clock.seconds)
    return {
        "steps": steps,
        "ours_s_per_step": round(ours_step, 4),
        "bare_s_per_step": round(bare_step, 4),
        "ratio": round(ours_step / bare_step, 4),
        "target_ratio": TARGET_RATIO,
        "ours_total_s": round(sum(ours_clock.seconds), 2),
        "bare_total_s": round(sum(bare_clock.seconds), 2),
        "ours_steps_s": [round(s, 4) for s in ours_clock.seconds],
        "bare_steps_s": [round(s, 4) for s in bare_clock.seconds],
    }


def train_both(folder: Path, label: str, overrides: list[str]) -> dict[str, Any]:
    """Ours, then bare, each trained to the end on the same recipe and evaluated: top-1 and the loss curves."""
    ours_losses = LossRecord()
    run = build_training(recipe(folder, f"{label}-ours", overrides), Path("smoke.yaml"))
    run.trainer.state.callbacks.append(ours_losses)
    summary = run.fit()
    bare_losses = LossRecord()
    bare = bare_trainer(recipe(folder, f"{label}-bare", overrides), f"{label}-bare", [bare_losses])
    bare.fit()
    bare_acc1 = validation_metrics(bare.state)[f"{VALIDATION_LABEL}/acc1"]
    bare.close()
    return {
        "ours_acc1": round(summary[f"{VALIDATION_LABEL}/acc1"], 4),
        "bare_acc1": round(bare_acc1, 4),
        "steps": len(ours_losses.losses),
        "same_losses": ours_losses.losses == bare_losses.losses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument(
        "--quick", action="store_true", help="a short run for the tests (figures not to quote)"
    )
    parser.add_argument("--repeats", type=int, help=f"whole runs of each per data set (default {REPEATS})")
    parser.add_argument("--timed-steps", type=int, help=f"steps timed per trainer (default {TIMED_STEPS})")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else REPEATS)
    steps = args.timed_steps or (QUICK_TIMED_STEPS if args.quick else TIMED_STEPS)
    model = QUICK_MODEL if args.quick else []
    check = [*model, *QUICK_TRAINING] if args.quick else CHECK_TRAINING
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cache = [f"data.cache_dir={folder / 'cache'}"]
        photos = ["data.source=imagefolder", f"data.path={write_photo_patches(folder / 'photos')}"]
        whole = {label: whole_runs(folder, label, repeats, args.quick) for label in ("digits", "photos")}
        timing = time_steps(folder, steps, [*cache, *model])
        training = {
            "digits": train_both(folder, "digits", [*cache, *check]),
            "photos": train_both(folder, "photos", [*cache, *photos, *check]),
        }
    within = all(result["ratio"] <= TARGET_RATIO for result in whole.values())
    not_lower = all(result["ours_acc1"] >= result["plain_acc1"] for result in whole.values())
    same = all(
        result["same_losses"] and result["ours_acc1"] >= result["bare_acc1"] for result in training.values()
    )
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(
            ["python", "bench/stack_overhead.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "quick": args.quick,
        "target_ratio": TARGET_RATIO,
        "whole_run": whole,
        "whole_run_within_target": within,
        "top1_not_lower": not_lower,
        "timing": timing,
        "training": training,
        "same_training": same,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(report_table(report, repeats, steps))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not same:
        print(
            "error: the stack changed what is trained (a lower top-1 or different losses than Composer's bare "
            "Trainer on the same model, data and schedule): a callback draws random numbers, reorders or "
            "transforms data, or edits the model or optimizer. Find it before trusting any run.",
            file=sys.stderr,
        )
        return 1
    return 0


def report_table(report: dict[str, Any], repeats: int, steps: int) -> str:
    """The three parts as the console shows them."""
    seeds = f"seed {SEED}" if repeats == 1 else f"seeds {SEED}-{SEED + repeats - 1}"
    lines = [
        f"whole run, launch to exit: train.py smoke against bench/plain_composer.py, median of {repeats} each "
        f"(target ratio <= {TARGET_RATIO}); top-1 the mean over {seeds}; training s/step by Composer's clock",
        f"{'data set':<10}{'ours s':>9}{'plain s':>9}{'ratio':>8}{'top-1 ours':>12}{'plain':>8}"
        f"{'s/step ours':>13}{'plain':>8}{'ratio':>8}",
    ]
    for name, result in report["whole_run"].items():
        lines.append(
            f"{name:<10}{result['ours_s']:>9.1f}{result['plain_s']:>9.1f}{result['ratio']:>8.3f}"
            f"{result['ours_acc1']:>12.4f}{result['plain_acc1']:>8.4f}{result['ours_s_per_step']:>13.4f}"
            f"{result['plain_s_per_step']:>8.4f}{result['step_ratio']:>8.3f}"
        )
    timing = report["timing"]
    lines += [
        f"per step, our Trainer and Composer's bare one taking turns ({steps} steps each, digits; target <= "
        f"{TARGET_RATIO})",
        f"{'':<10}{'ours s':>9}{'bare s':>9}{'ratio':>8}",
        f"{'':<10}{timing['ours_s_per_step']:>9.4f}{timing['bare_s_per_step']:>9.4f}{timing['ratio']:>8.3f}",
        "the same training, ours against the bare Trainer (two epochs each)",
        f"{'data set':<10}{'top-1 ours':>12}{'bare':>8}  same losses",
    ]
    for name, result in report["training"].items():
        lines.append(
            f"{name:<10}{result['ours_acc1']:>12.4f}{result['bare_acc1']:>8.4f}  {result['same_losses']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
