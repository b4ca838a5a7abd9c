"""Benchmark what this project's stack costs per training step, and check that it trains what Composer trains.

    python bench/stack_overhead.py [--output FILE] [--quick] [--timed-steps N] [--write-shapes DIR]

"Ours" is the Trainer train.py runs, as ``training.trainer.build_training`` builds it from the smoke recipe
(stable metric names, the training doctor, preemption and exact resume, the metrics file, the checkpoint saver,
the throughput monitor). "Bare" is Composer's Trainer built by the same ``training.trainer.build_trainer`` on the
same model, data loaders, optimizer and schedule, with no callbacks, loggers or checkpoints of ours.

1. Time per step. Both trainers are built, then trained in two threads that take turns one step at a time (a
   callback at the end of each step hands over and waits), so a busy machine slows both alike. A step's time runs
   from the moment a trainer gets its turn to the end of its step, data loading and every callback included; the
   figure is the median over the timed steps but the first and the last (one-time costs: workers starting, the
   final checkpoint; the JSON keeps every step and the totals), and the ratio ours / bare has a target of at
   most 1.03.
2. Top-1. Each trainer trains to the end, one after the other and seeded alike, on the bundled digits and on a
   generated set the recipe was not tuned on (``write_shapes``: six shapes in random colours, sizes, angles and
   places over random textures), and evaluates. Both also record every step's loss. The stack only watches and
   writes, so the losses should match exactly and ours should never score lower; if it does (or the losses
   differ), the stack changed what is trained (an extra random draw, another data order or transform), the
   report says so and the command exits with status 1.

``--quick`` shrinks both parts (resnet18, six timed steps; two epochs of three batches) so the test suite can run
the whole bench in about two minutes; its figures are not the ones to quote. ``--write-shapes DIR`` only writes the
generated set (``DIR/train/<shape>/*.jpg``, ``DIR/val/<shape>/*.jpg``) for use with
``data.source=imagefolder data.path=DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from composer import Evaluator, Trainer
from composer.core import Callback, State
from composer.loggers import Logger
from PIL import Image, ImageDraw, ImageFilter

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from callbacks.metric_names import VALIDATION_LABEL, batch_loss, validation_metrics  # noqa: E402
from data import build_data  # noqa: E402
from model import build_model  # noqa: E402
from training.optimization import build_optimizer, build_scheduler  # noqa: E402
from training.preflight import load_run_recipe  # noqa: E402
from training.trainer import build_trainer, build_training, start_run  # noqa: E402

TARGET_RATIO = 1.03
TIMED_STEPS = 40
QUICK_TIMED_STEPS = 6
SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
SHAPE_IMAGES = {"train": 240, "val": 60}  # per class: 1,440 / 360, about the digits' 1,437 / 360
SHAPE_SIZE = 48
# --quick: resnet18 for both parts; two epochs of three batches, and 48 validation images, to train to the end.
QUICK_MODEL = ["model.name=resnet18"]
QUICK_TRAINING = ["data.subset_size=96", "data.val_subset_size=48", "max_duration=2ep"]


# ---- the generated set ----


def shape_polygon(shape: str, centre: tuple[float, float], radius: float, angle: float) -> list[list[float]]:
    """The outlines to fill (the second, if any, is a hole) of ``shape`` around ``centre``."""

    def ring_of(count: int, radii: list[float]) -> list[float]:
        points = []
        for index in range(count):
            theta = angle + 2 * math.pi * index / count
            r = radii[index % len(radii)]
            points += [centre[0] + r * math.cos(theta), centre[1] + r * math.sin(theta)]
        return points

    if shape == "circle":
        return [ring_of(48, [radius])]
    if shape == "ring":
        return [ring_of(48, [radius]), ring_of(48, [radius * 0.55])]
    if shape == "square":
        return [ring_of(4, [radius])]
    if shape == "triangle":
        return [ring_of(3, [radius])]
    if shape == "star":
        return [ring_of(10, [radius, radius * 0.45])]
    # cross: twelve corners, arms a third of the width
    arm = radius / 3
    corners = [(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm)]
    corners += [(arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm)]
    cos, sin = math.cos(angle), math.sin(angle)
    return [[v for x, y in corners for v in (centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos)]]


def shape_image(shape: str, rng: np.random.Generator) -> Image.Image:
    """One shape in a random colour, size, angle and place over a random texture (blurred coloured noise)."""
    noise = rng.integers(0, 256, (SHAPE_SIZE // 4, SHAPE_SIZE // 4, 3), dtype=np.uint8)
    texture = Image.fromarray(noise).resize((SHAPE_SIZE, SHAPE_SIZE), Image.Resampling.BICUBIC)
    image = texture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    radius = float(rng.uniform(0.25, 0.45)) * SHAPE_SIZE
    centre = (
        float(rng.uniform(radius, SHAPE_SIZE - radius)),
        float(rng.uniform(radius, SHAPE_SIZE - radius)),
    )
    outlines = shape_polygon(shape, centre, radius, float(rng.uniform(0, 2 * math.pi)))
    draw = ImageDraw.Draw(image)
    draw.polygon(outlines[0], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    for hole in outlines[1:]:
        draw.polygon(hole, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def write_shapes(folder: Path, seed: int = 0) -> Path:
    """``folder/{train,val}/<shape>/<index>.jpg``; the same files for the same seed."""
    rng = np.random.default_rng(seed)
    for split, count in SHAPE_IMAGES.items():
        for shape in SHAPES:
            (folder / split / shape).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                shape_image(shape, rng).save(folder / split / shape / f"{index:04d}.jpg", quality=90)
    return folder


# ---- the two trainers ----


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
    parser.add_argument("--timed-steps", type=int, help=f"steps timed per trainer (default {TIMED_STEPS})")
    parser.add_argument(
        "--write-shapes", type=Path, metavar="DIR", help="only write the generated set to DIR"
    )
    args = parser.parse_args(argv)
    if args.write_shapes:
        write_shapes(args.write_shapes)
        print(f"wrote {args.write_shapes}/train and {args.write_shapes}/val ({len(SHAPES)} shapes)")
        return 0
    steps = args.timed_steps or (QUICK_TIMED_STEPS if args.quick else TIMED_STEPS)
    model = QUICK_MODEL if args.quick else []
    shrink = [*model, *QUICK_TRAINING] if args.quick else []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cache = [f"data.cache_dir={folder / 'cache'}"]
        timing = time_steps(folder, steps, [*cache, *model])
        shapes = [
            "data.source=imagefolder",
            f"data.path={write_shapes(folder / 'shapes')}",
            "data.index_cache=false",
        ]
        accuracy = {
            "digits": train_both(folder, "digits", [*cache, *shrink]),
            "shapes": train_both(folder, "shapes", [*cache, *shapes, *shrink]),
        }
    not_lower = all(result["ours_acc1"] >= result["bare_acc1"] for result in accuracy.values())
    same = all(result["same_losses"] for result in accuracy.values())
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(
            ["python", "bench/stack_overhead.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "quick": args.quick,
        "timing": timing,
        "accuracy": accuracy,
        "ours_not_lower": not_lower,
        "same_losses": same,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(
        f"{'per step':<12}{'ours s':>10}{'bare s':>10}{'ratio':>8}  (target <= {TARGET_RATIO}, {steps} steps each)"
    )
    print(
        f"{'':<12}{timing['ours_s_per_step']:>10.4f}{timing['bare_s_per_step']:>10.4f}{timing['ratio']:>8.3f}"
    )
    print(f"{'top-1':<12}{'ours':>10}{'bare':>10}  same losses")
    for name, result in accuracy.items():
        print(f"{name:<12}{result['ours_acc1']:>10.4f}{result['bare_acc1']:>10.4f}  {result['same_losses']}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not (not_lower and same):
        print(
            "error: the stack changed what is trained (a lower top-1 or different losses than Composer's bare "
            "Trainer on the same model, data and schedule): a callback draws random numbers, reorders or "
            "transforms data, or edits the model or optimizer. Find it before trusting any run.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
