"""The run summary: ``summary.json`` with final accuracy, loss, wall time and throughput, and a console table.

Composer keeps these numbers spread over its state and loggers; a person comparing runs wants one small file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from composer import Trainer
from composer.utils import dist

from algorithms.optimization import LearningRatePlan
from algorithms.registry import enabled_algorithms
from algorithms.run_logging import MetricsFile, validation_metrics


def build_summary(
    trainer: Trainer,
    metrics_file: MetricsFile,
    *,
    run_name: str,
    recipe_path: str,
    lr_plan: LearningRatePlan,
    algorithms: dict[str, Any],
    wall_time_s: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Everything a person needs to compare runs, from the trainer's final state and the logged metrics."""
    timestamp = trainer.state.timestamp
    # Composer's training clock excludes time spent in evaluation.
    train_seconds = timestamp.total_wct.total_seconds()
    samples = int(timestamp.sample)
    summary: dict[str, Any] = {
        "run_name": run_name,
        "recipe": recipe_path,
        **validation_metrics(trainer.state),
        "train/loss": metrics_file.latest.get("train/loss", math.nan),
        "train/acc1": metrics_file.latest.get("train/acc1", math.nan),
        # EMA swaps its averaged weights in for every evaluation, so the reported accuracy is the EMA model's.
        "weights_evaluated": "ema" if "ema" in enabled_algorithms(algorithms) else "raw",
        "epochs": int(timestamp.epoch),
        "steps": int(timestamp.batch),
        "samples_seen": samples,
        "wall_time_s": round(wall_time_s, 2),
        "train_time_s": round(train_seconds, 2),
        "throughput/samples_per_sec": round(samples / train_seconds, 2) if train_seconds else math.nan,
        "lr": lr_plan.lr,
        "lr_rule": lr_plan.describe(),
        **extra,
    }
    return {
        k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)) for k, v in summary.items()
    }


def write_summary(folder: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` (global rank 0 only) and return its path."""
    path = Path(folder) / "summary.json"
    if dist.get_global_rank() == 0:
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the end of the console output."""
    keys = ["val/acc1", "val/acc5", "val/loss", "train/loss", "weights_evaluated", "epochs", "wall_time_s"]
    keys += ["throughput/samples_per_sec"]
    width = max(len(k) for k in keys)
    lines = [
        f"  {k:<{width}}  {summary[k]:.4f}"
        if isinstance(summary.get(k), float)
        else f"  {k:<{width}}  {summary.get(k)}"
        for k in keys
        if k in summary
    ]
    return "Run summary\n" + "\n".join(lines)
