"""The run summary: ``summary.json`` with final accuracy, loss, wall time and throughput, and a console table.

Composer keeps these numbers spread over its state and loggers; a person comparing runs wants one small file. It
says what happened rather than what was asked for: epochs as a fraction when a run stops inside one, the peak and
the last learning rate, and every finding the run folder's ``findings.jsonl`` records.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from composer import Trainer
from composer.algorithms import EMA
from composer.devices import DeviceGPU
from composer.utils import dist

from callbacks.findings import FINDINGS_FILENAME, Finding, read_findings
from callbacks.knn_monitor import KNN_ACC1, KNN_ACC5
from callbacks.metric_names import TRAIN_ACC1, validation_metrics
from callbacks.metrics_file import MetricsFile
from training.optimization import LearningRatePlan

SUMMARY_FILENAME = "summary.json"
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
    output_folder: str | Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Everything a person needs to compare runs, from the trainer's final state, the logged metrics and the
    findings recorded in ``output_folder``."""
    timestamp = trainer.state.timestamp
    per_epoch = _batches_per_epoch(trainer)
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
        # Fractional: a run that stops inside an epoch has trained part of one, not none.
        "epochs": _epochs(int(timestamp.epoch), int(timestamp.batch_in_epoch), per_epoch),
        "steps": int(timestamp.batch),
        "batches_per_epoch": per_epoch,
        "samples_seen": samples,
        "wall_time_s": round(wall_time_s, 2),
        "train_time_s": round(train_seconds, 2),
        "throughput/samples_per_sec": round(samples / train_seconds, 2) if train_seconds else math.nan,
        # The schedule's peak (the rule's LR), and the LR the optimizer held at the end (the last "lr" logged).
        "peak_lr": lr_plan.lr,
        "final_lr": metrics_file.latest.get("lr", math.nan),
        "lr_rule": lr_plan.describe(),
        "parameters_sha256_by_rank": parameters_digest_by_rank(trainer.state.model),
        "accelerator": _accelerator(trainer),
        **extra,
        # The run folder's record (recipe checks, the doctor, the curve watch), so the two never disagree.
        "findings": [asdict(finding) for finding in _unique(read_findings(output_folder))],
    }
    return {
        k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)) for k, v in summary.items()
    }


def _batches_per_epoch(trainer: Trainer) -> int | None:
    """The training loader's batches per epoch (None for a loader without a length)."""
    try:
        return len(trainer.state.train_dataloader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _epochs(epoch: int, batch_in_epoch: int, per_epoch: int | None) -> float:
    """Epochs trained, with the part of an unfinished one (whole epochs when the loader has no length)."""
    return round(epoch + batch_in_epoch / per_epoch, 3) if per_epoch else float(epoch)


def _accelerator(trainer: Trainer) -> str:
    """What trained: the GPU's name (a plan calibrated from this run checks it), or "cpu"."""
    if isinstance(trainer.state.device, DeviceGPU):
        return torch.cuda.get_device_name()
    return "cpu"


def _unique(findings: list[Finding]) -> list[Finding]:
    """Each finding once, in order: a resumed run repeats its recipe checks in the file."""
    return list(dict.fromkeys(findings))


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
    path = Path(folder) / SUMMARY_FILENAME
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
        "lr",
        "findings",
        "wall_time_s",
        "throughput/samples_per_sec",
    ]
    width = max(len(k) for k in keys)
    shown = {key: _shown(key, summary) for key in keys}
    lines = [] if len(set(summary.get("parameters_sha256_by_rank", []))) <= 1 else [DIVERGED_WARNING]
    lines += [f"  {key:<{width}}  {text}" for key, text in shown.items() if text is not None]
    return "Run summary\n" + "\n".join(lines)


def _shown(key: str, summary: dict[str, Any]) -> str | None:
    """One console value: epochs with the steps they are, both learning rates, findings by severity."""
    if key == "epochs" and "epochs" in summary:
        per_epoch = summary.get("batches_per_epoch")
        return f"{summary['epochs']:g} ({summary.get('steps')} steps" + (
            f" of {per_epoch} per epoch)" if per_epoch else ")"
        )
    if key == "lr" and "peak_lr" in summary:
        final = summary.get("final_lr")
        return f"peak {summary['peak_lr']:.4g}" + (f", final {final:.4g}" if isinstance(final, float) else "")
    if key == "findings" and "findings" in summary:
        severities = [finding["severity"] for finding in summary["findings"]]
        counts = [
            f"{severities.count(kind)} {kind}(s)" for kind in ("error", "warning") if kind in severities
        ]
        return ", ".join(counts) + f" ({FINDINGS_FILENAME})" if counts else "none"
    if key not in summary:
        return None
    value = summary[key]
    return f"{value:.4f}" if isinstance(value, float) else str(value)
