"""The LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3; fastai's
``lr_find``): train the recipe's own model on its own data while the learning rate grows exponentially, and read
from the loss curve which learning rates train and which diverge.

It runs Composer's ``Trainer`` on what the recipe builds (model, data and augmentation, optimizer with its
batch-size rule, algorithms), with three things changed: the schedule is an exponential sweep stepped every
batch, there is no evaluation and no checkpoint, and the algorithms that would corrupt the reading are left out
(``LEFT_OUT``). ``RangeTestRecorder`` feeds each batch into a ``LossCurve`` (``tools.lr_range_curve``, which
smooths it and decides when it has diverged) and stops the run; ``analyse`` turns the curve into two reference LRs
and three suggestions. ``train.py --find-lr`` calls ``run_range_test`` and prints ``RangeTestResult.report()``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from omegaconf import DictConfig, OmegaConf

from algorithms.registry import build_algorithms, enabled_algorithms
from callbacks.metric_names import batch_loss
from callbacks.ranks import say
from data import build_data
from recipes.errors import UsageError
from recipes.loading import recipe_to_yaml
from recipes.schema import Task
from tools.lr_range_curve import APPLIED_SUGGESTION, SHAPES, Analysis, LossCurve, RangeTestSettings, analyse
from training.optimization import build_optimizer
from training.runtime import close_trainer
from training.trainer import build_task_model, build_trainer, start_run

JSON_FILENAME = "lr_range_test.json"
PLOT_FILENAME = "lr_range_test.png"
# Algorithms that would make the loss move for reasons other than the learning rate.
RESIZING = "it changes the image size during the sweep, so the loss would follow the resolution, not the LR"
LEFT_OUT = {
    "swa": "it replaces the LR schedule with its own from swa_start on, so the sweep would stop sweeping",
    "ema": "it only averages weights for evaluation; the training loss the test reads is the raw model's",
    "progressive_resizing": RESIZING,
    "data_progressive_resizing": RESIZING,
}


class RangeTestRecorder(Callback):
    """Feeds each batch's LR and loss into a ``LossCurve``, stops the run when it says so, and shows progress.

    The loss is the batch's mean over every rank and microbatch (Composer's ``loss/train/total``, as
    ``callbacks.metric_names.StableMetricNames`` reads it), so every rank takes the same decision to stop. The LR
    is read at batch start: Composer steps the schedule before ``BATCH_END``, when it is already the next one's.

    It also keeps each parameter group's ``initial_lr`` equal to its LR. Composer's decoupled optimizers scale
    weight decay by ``lr / initial_lr``; left alone, a sweep over six decades would multiply the recipe's weight
    decay by up to 1e6 and the run would diverge from decay, not from the LR. Pinned, every step decays as much
    as the peak of a real run at that LR does.
    """

    def __init__(self, settings: RangeTestSettings, announce: Callable[[str], None] | None = None) -> None:
        self.curve = LossCurve(settings)
        self.announce = announce
        self._lr = math.nan

    def batch_start(self, state: State, logger: Logger) -> None:
        for optimizer in state.optimizers:
            for group in optimizer.param_groups:
                group["initial_lr"] = group["lr"]
        self._lr = state.optimizers[0].param_groups[0]["lr"]

    def batch_end(self, state: State, logger: Logger) -> None:
        loss = batch_loss(state)
        if self.curve.record(self._lr, loss):
            state.stop_training()
        step, iterations = len(self.curve.losses), self.curve.settings.iterations
        if self.announce is not None and (step % max(1, iterations // 10) == 0 or self.curve.diverged):
            self.announce(
                f"  step {step:>4}/{iterations}  lr {self._lr:.3e}  loss {loss:.4g}  "
                f"smoothed {self.curve.smoothed_losses[-1]:.4g}"
            )


@dataclass
class RangeTestResult:
    """Everything the range test measured and concluded; ``report()`` for people, ``to_json()`` for files."""

    recipe_path: str
    output_folder: Path
    optimizer_name: str
    global_batch_size: int
    lr_scaling: str
    recipe_base_lr: float
    recipe_lr: float
    algorithms_used: list[str]
    algorithms_left_out: dict[str, str]
    curve: LossCurve
    analysis: Analysis
    wall_time_s: float
    files: list[Path] = field(default_factory=list)

    def report(self) -> str:
        """The console summary: what was swept, why it stopped, the reference LRs and the suggestions."""
        settings, curve = self.curve.settings, self.curve
        lines = [
            f"LR range test of {self.recipe_path}: {self.optimizer_name}, global batch {self.global_batch_size}, "
            f"{self.lr_scaling} LR rule; LR {settings.min_lr:g} -> {settings.max_lr:g} over up to "
            f"{settings.iterations} steps ({self.wall_time_s:.0f} s)",
            f"ended: {curve.stop_reason}",
        ]
        for name, why in self.algorithms_left_out.items():
            lines.append(f"left out algorithm {name}: {why}")
        steepest, minimum = self.analysis.steepest, self.analysis.minimum
        if steepest is not None:
            lines.append(
                f"steepest descent of the smoothed loss: LR {steepest.lr:.3g} (base_lr {steepest.base_lr:.3g} "
                f"per 256), smoothed loss {steepest.smoothed_loss:.4g}"
            )
        if minimum is not None:
            lines.append(
                f"minimum smoothed loss {minimum.smoothed_loss:.4g} at LR {minimum.lr:.3g} (base_lr "
                f"{minimum.base_lr:.3g} per 256)"
            )
        if self.analysis.suggestions:
            lines.append("suggestions (fraction of the LR at minimum loss):")
            for suggestion in self.analysis.suggestions.values():
                marker = "   <- --apply writes this one" if suggestion.name == APPLIED_SUGGESTION else ""
                lines.append(
                    f"  {suggestion.name:<12} {suggestion.fraction:>4.0%}  LR {suggestion.lr:<10.3g} "
                    f"optimizer.base_lr={suggestion.base_lr:g}{marker}"
                )
        else:
            lines.append(f"no suggestion: {SHAPES[self.analysis.shape]}")
        lines.extend(f"warning: {warning}" for warning in self.analysis.warnings)
        lines.append(
            f"the recipe now uses LR {self.recipe_lr:.3g} (optimizer.base_lr={self.recipe_base_lr:g}; the "
            "run's peak LR, marked on the plot)"
        )
        if self.files:
            lines.append(f"wrote {', '.join(str(path) for path in self.files)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Settings, the per-step curve, the reference LRs, the suggestions and why the sweep stopped."""

        def number(value: float) -> float | str:
            return value if math.isfinite(value) else str(value)

        curve = self.curve
        steps = [
            {
                "step": index + 1,
                "lr": lr,
                "loss": number(loss),
                "smoothed_loss": number(smooth),
            }
            for index, (lr, loss, smooth) in enumerate(
                zip(curve.lrs, curve.losses, curve.smoothed_losses, strict=True)
            )
        ]
        analysis = self.analysis
        return {
            "recipe": self.recipe_path,
            "settings": asdict(curve.settings),
            "optimizer": self.optimizer_name,
            "global_batch_size": self.global_batch_size,
            "lr_scaling": self.lr_scaling,
            "recipe_base_lr": self.recipe_base_lr,
            "recipe_lr": self.recipe_lr,
            "algorithms_used": self.algorithms_used,
            "algorithms_left_out": self.algorithms_left_out,
            "steps_run": len(curve.losses),
            "stopped_early": curve.stopped_early,
            "diverged": curve.diverged,
            "stop_reason": curve.stop_reason,
            "shape": analysis.shape,
            "steepest": asdict(analysis.steepest) if analysis.steepest else None,
            "minimum": asdict(analysis.minimum) if analysis.minimum else None,
            "reference": "minimum",
            "suggestions": {name: asdict(suggestion) for name, suggestion in analysis.suggestions.items()},
            "warnings": analysis.warnings,
            "wall_time_s": round(self.wall_time_s, 2),
            "steps": steps,
        }


def plot_marks(result: RangeTestResult) -> list[tuple[str, float, str, str]]:
    """The plot's vertical marks as (label, LR, colour, line style): the steepest descent, the suggestions, and
    the recipe's own LR (the peak LR its run would apply), so a reader sees where the recipe sits on the curve."""
    marks = []
    if result.analysis.steepest is not None:
        marks.append(("steepest descent", result.analysis.steepest.lr, "tab:green", ":"))
    colours = {"conservative": "tab:olive", "moderate": "tab:orange", "aggressive": "tab:red"}
    for suggestion in result.analysis.suggestions.values():
        label = f"{suggestion.name} {suggestion.fraction:.0%}: base_lr {suggestion.base_lr:g}"
        marks.append((label, suggestion.lr, colours.get(suggestion.name, "black"), "--"))
    marks.append((f"recipe now: base_lr {result.recipe_base_lr:g}", result.recipe_lr, "black", "-."))
    return marks


def plot_range_test(result: RangeTestResult, path: Path) -> Path:
    """Loss against LR on a log axis: raw losses faint, the smoothed curve over them at the same LRs, and
    vertical marks (``plot_marks``); the title says diverged only when the curve's divergence rule fired."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.subplots()
    curve = result.curve
    losses = np.array(curve.losses, dtype=float)
    smoothed = np.array(curve.smoothed_losses, dtype=float)
    axes.plot(curve.lrs, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss per batch")
    half_width = curve.settings.smoothing_half_width()
    axes.plot(
        curve.lrs, smoothed, color="tab:blue", linewidth=2, label=f"smoothed (mean of {2 * half_width + 1})"
    )
    axes.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:
        low = min(float(np.nanmin(losses[np.isfinite(losses)])), float(finite.min()))
        # The divergence spike would flatten the interesting part; the smoothed curve's range is what matters.
        axes.set_ylim(max(0.0, low - 0.1 * (finite.max() - low)), finite.max() * 1.15)
    for label, lr, colour, style in plot_marks(result):
        axes.axvline(lr, color=colour, linestyle=style, linewidth=1.5, label=f"{label} (LR {lr:.3g})")
    axes.set_xlabel("learning rate (applied, log scale)")
    axes.set_ylabel("training loss")
    verdict = "" if result.analysis.suggestions else f"\nno suggestion: {SHAPES[result.analysis.shape]}"
    axes.set_title(
        f"LR range test: {Path(result.recipe_path).name}, {result.optimizer_name}, batch "
        f"{result.global_batch_size}\n{curve.headline}{verdict}",
        fontsize=9,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.savefig(path, dpi=110)
    return path


# Why --find-lr does not apply to task: moco_v3. The suggestion reads where a loss falls fastest over a few hundred
# steps, a reading tested on supervised runs only; a contrastive loss over such a sweep mostly measures how far
# the momentum encoder's keys trail the base encoder (about 1 / (1 - m) = 100 steps at m = 0.99), and MoCo v3's
# LR is not where its loss first falls fastest but the value the official runs established per 256 images.
PRETRAINING_REFUSAL = (
    "--find-lr does not apply to task: moco_v3. The range test suggests the LR where a loss falls fastest over a "
    "short sweep, which holds for supervised losses; a contrastive loss over a few hundred steps mostly shows "
    "the momentum encoder's keys catching up with the base encoder (they trail it by ~1/(1-m) steps, 100 at "
    "m=0.99), not whether the LR trains. Use the official per-256 value with the linear rule: LARS base_lr 0.6 "
    "for 100 epochs, 0.3 for 300 or more (facebookresearch/moco-v3 CONFIG.md), as recipes/moco_v3_*.yaml do; "
    "the training doctor flags an applied LR far below it (lr_below_official). The LR range test "
    "does apply to the linear probe: train.py linear_probe --find-lr."
)


def run_range_test(config: DictConfig, recipe_path: Path, settings: RangeTestSettings) -> RangeTestResult:
    """Sweep the LR on the recipe's model, data, optimizer and algorithms; write the JSON and plot on rank 0.

    A linear probe sweeps its classifier on the frozen backbone, as it trains. MoCo v3 pretraining is refused
    (``PRETRAINING_REFUSAL`` says why) before anything is built."""
    if config.task == Task.moco_v3:
        raise UsageError(PRETRAINING_REFUSAL)
    started = time.perf_counter()
    start = start_run(config, recipe_path, name_suffix="-lr-range")
    output_folder = start.folders.output

    enabled = enabled_algorithms(config.algorithms)
    left_out = {name: why for name, why in LEFT_OUT.items() if name in enabled}
    kept = {name: arguments for name, arguments in enabled.items() if name not in LEFT_OUT}
    data = build_data(config, device=start.runtime.device, bad_image_list=start.bad_image_list)
    model = build_task_model(config, data.num_classes, start.runtime.device)
    optimizer, plan = build_optimizer(model, config.optimizer, config.global_batch_size)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = settings.min_lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.multiplier)
    recorder = RangeTestRecorder(settings, announce=say)
    say(
        f"LR range test {start.run_name}: {data.train_size} training images, batch {config.global_batch_size}, "
        f"LR {settings.min_lr:g} -> {settings.max_lr:g} over up to {settings.iterations} steps "
        f"({settings.iterations / len(data.train.dataloader):.1f} epochs)"
    )
    for name, why in left_out.items():
        say(f"note: left out algorithm {name}: {why}")

    trainer = build_trainer(
        start,
        config,
        data,
        model,
        optimizer,
        max_duration=f"{settings.iterations}ba",
        schedulers=scheduler,
        algorithms=build_algorithms(kept, global_batch_size=config.global_batch_size),
        callbacks=[recorder],
        progress_bar=False,
        log_to_console=False,
    )
    trainer.fit()
    close_trainer(trainer)

    result = RangeTestResult(
        recipe_path=str(recipe_path),
        output_folder=output_folder,
        optimizer_name=config.optimizer.name,
        global_batch_size=config.global_batch_size,
        lr_scaling=config.optimizer.lr_scaling,
        recipe_base_lr=plan.base_lr,
        recipe_lr=plan.lr,
        algorithms_used=list(kept),
        algorithms_left_out=left_out,
        curve=recorder.curve,
        analysis=analyse(recorder.curve, config.global_batch_size, config.optimizer.lr_scaling),
        wall_time_s=time.perf_counter() - started,
    )
    if dist.get_global_rank() == 0:
        output_folder.mkdir(parents=True, exist_ok=True)
        json_path = output_folder / JSON_FILENAME
        json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        result.files = [json_path, plot_range_test(result, output_folder / PLOT_FILENAME)]
    return result


def write_applied_recipe(config: DictConfig, result: RangeTestResult) -> Path:
    """Write the recipe as resolved (bases merged, command-line overrides included) with ``optimizer.base_lr``
    set to the moderate suggestion, into the range test's folder; the original file is left alone.

    The resolved copy, not an overlay beside the original, because the suggestion holds for the configuration
    that was swept, overrides and all (a ``data.path`` given on the command line, say), and a copy with no
    ``base:`` chain keeps meaning the same thing when the recipe it came from is later edited.
    """
    suggestion = result.analysis.suggestions.get(APPLIED_SUGGESTION)
    if suggestion is None:
        raise UsageError(
            "--apply has nothing to write: the range test found no usable minimum "
            f"({'; '.join(result.analysis.warnings)}). Adjust --min-lr/--max-lr and run it again."
        )
    applied = OmegaConf.create(OmegaConf.to_container(config, resolve=True, enum_to_str=True))
    applied.optimizer.base_lr = suggestion.base_lr
    path = result.output_folder / f"{Path(result.recipe_path).stem}-suggested-lr.yaml"
    header = (
        f"# {result.recipe_path}, resolved, with optimizer.base_lr set by the LR range test in "
        f"{result.output_folder}/\n# ({APPLIED_SUGGESTION} suggestion: {suggestion.fraction:.0%} of the LR at "
        f"minimum loss, {suggestion.lr:.3g} at global batch {result.global_batch_size}; the recipe had "
        f"{result.recipe_base_lr:g}).\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + recipe_to_yaml(applied), encoding="utf-8")
    return path
