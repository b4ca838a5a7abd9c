"""The run summary: ``summary.json`` with final accuracy, loss, wall time and throughput, and a console table.

Composer keeps these numbers spread over its state and loggers; a person comparing runs wants one small file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from composer import Trainer
from composer.algorithms import EMA
from composer.utils import dist

from callbacks.knn_monitor import KNN_ACC1, KNN_ACC5
from callbacks.metric_names import TRAIN_ACC1, validation_metrics
from callbacks.metrics_file import MetricsFile
from training.optimization import LearningRatePlan

DIVERGED_WARNING = (
    "  warning: the DDP ranks ended with different parameters (parameters_sha256_by_rank in summary.json); "
    "rank 0's checkpoint is what was saved"
)


def build_summary(
    trainer: Trainer,
    metrics_file: MetricsFile,
    *,
    run_name: str,
    recipe_path: str,
    lr_plan: LearningRatePlan,
    wall_time_s: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Everything a person needs to compare runs, from the trainer's final state and the logged metrics."""
    timestamp = trainer.state.timestamp
    # Composer's training clock excludes time spent in evaluation.
    train_seconds = timestamp.total_wct.total_seconds()
    samples = int(timestamp.sample)
    evaluated = validation_metrics(trainer.state)
    summary: dict[str, Any] = {
        "run_name": run_name,
        "recipe": recipe_path,
        **evaluated,
        "train/loss": metrics_file.latest.get("train/loss", math.nan),
        # A classifier's training accuracy; a pretraining run has none, and its last k-NN reading instead.
        **{
            name: metrics_file.latest[name]
            for name in (TRAIN_ACC1, KNN_ACC1, KNN_ACC5)
            if name in metrics_file.latest
        },
        # A started EMA swaps its averaged weights in for every evaluation, so the reported accuracy is the EMA
        # model's; before ema_start it is the training weights' (a pretraining run evaluates nothing).
        "weights_evaluated": _weights_evaluated(trainer.state) if evaluated else None,
        "epochs": int(timestamp.epoch),
        "steps": int(timestamp.batch),
        "samples_seen": samples,
        "wall_time_s": round(wall_time_s, 2),
        "train_time_s": round(train_seconds, 2),
        "throughput/samples_per_sec": round(samples / train_seconds, 2) if train_seconds else math.nan,
        "lr": lr_plan.lr,
        "lr_rule": lr_plan.describe(),
        "parameters_sha256_by_rank": parameters_digest_by_rank(trainer.state.model),
        **extra,
    }
    return {
        k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)) for k, v in summary.items()
    }


def weights_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes in order (names left out, so wrapper prefixes do not matter)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameters_digest_by_rank(model: torch.nn.Module) -> list[str]:
    """Every rank's digest of its final parameters, gathered on all ranks (call it on every rank).

    DDP replicas must end with identical parameters; equal digests show they did, and one digest compares two
    runs bit for bit. Buffers are left out: each rank keeps its own BatchNorm running statistics by design
    (DDP broadcasts rank 0's before each training forward, ``RankZeroBuffers`` before each evaluation).
    """
    digests = dist.all_gather_object(weights_digest(model.parameters()))
    return [str(digest) for digest in digests]


def _weights_evaluated(state: Any) -> str:
    """ "ema" when Composer's EMA had started by the last evaluation (it evaluates its average), else "raw"."""
    ema = next((algorithm for algorithm in state.algorithms if isinstance(algorithm, EMA)), None)
    return "ema" if ema is not None and ema.ema_started else "raw"


def write_summary(folder: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` (global rank 0 only) and return its path."""
    path = Path(folder) / "summary.json"
    if dist.get_global_rank() == 0:
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the end of the console output."""
    keys = [
        "val/acc1",
        "val/acc5",
        "val/loss",
        KNN_ACC1,
        "train/loss",
        "weights_evaluated",
        "epochs",
        "wall_time_s",
    ]
    keys += ["throughput/samples_per_sec"]
    width = max(len(k) for k in keys)
    lines = [] if len(set(summary.get("parameters_sha256_by_rank", []))) <= 1 else [DIVERGED_WARNING]
    lines += [
        f"  {k:<{width}}  {summary[k]:.4f}"
        if isinstance(summary.get(k), float)
        else f"  {k:<{width}}  {summary.get(k)}"
        for k in keys
        if k in summary
    ]
    return "Run summary\n" + "\n".join(lines)
