"""``metrics.jsonl``: one JSON line per logged training step (every N) and per evaluation, readable without
Composer, so a crashed run's curve can be plotted from the file alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TextIO

from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from callbacks.curve_watch import WATCH_PREFIX
from callbacks.knn_monitor import KNN_PREFIX
from callbacks.metric_names import VALIDATION_LABEL, as_float

# Composer's own names for what StableMetricNames re-logs, and its clock counters (each line carries step and
# epoch already): the metrics file leaves them out to stay readable.
COMPOSER_DUPLICATE_PREFIXES = ("metrics/", "loss/", "lr-", "time/", "trainer/")
# Evaluations, each written as its own line whatever the training lines' interval: the validation set's
# metrics, the curve watch's comparison of them, and the k-NN monitor's (logged at an epoch's last step, which the
# training lines may skip).
EVALUATION_PREFIXES = (f"{VALIDATION_LABEL}/", WATCH_PREFIX, KNN_PREFIX)


class MetricsFile(LoggerDestination):
    """Writes ``metrics.jsonl``: a training line every ``every_n_batches`` steps and a line for each eval.

    Each line carries the step and epoch, so a crashed run's curve can be plotted from the file
    alone. A training line is written once the next step starts logging (or at the end), so it holds everything
    logged for its step whatever order the callbacks ran in. Only global rank 0 writes.
    """

    def __init__(
        self,
        folder: str | Path,
        every_n_batches: int = 10,
        append: bool = False,
        filename: str = "metrics.jsonl",
    ) -> None:
        self.path = Path(folder) / filename
        # An autoresumed run continues its file; a fresh run into the same folder starts a new one.
        self.mode = "a" if append else "w"
        self.every_n_batches = max(1, every_n_batches)
        self.step: int | None = None
        self.pending: dict[str, Any] = {}
        self.latest: dict[str, float] = {}
        self._state: State | None = None
        self._file: TextIO | None = None

    def init(self, state: State, logger: Logger) -> None:
        self._state = state
        if dist.get_global_rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open(self.mode, encoding="utf-8")

    def _line(self, phase: str, step: int, values: dict[str, Any]) -> None:
        if self._file is None or not values:
            return
        timestamp = self._state.timestamp if self._state is not None else None
        line: dict[str, Any] = {"phase": phase, "step": step}
        if timestamp is not None:
            line["epoch"] = int(timestamp.epoch)
        line.update(values)
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def _flush_train(self, force: bool = False) -> None:
        if self.step is not None and (force or self.step % self.every_n_batches == 0):
            self._line("train", self.step, self.pending)
        self.pending = {}

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {}
        for name, value in metrics.items():
            if name.startswith(COMPOSER_DUPLICATE_PREFIXES):
                continue
            try:
                number = as_float(value)
            except (TypeError, ValueError):
                continue
            values[name] = number if math.isfinite(number) else str(number)
            self.latest[name] = number
        if not values:
            return
        if any(name.startswith(EVALUATION_PREFIXES) for name in values):
            self._line("eval", int(step or 0), values)
            return
        if step != self.step:
            self._flush_train()
            self.step = step
        self.pending.update(values)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._flush_train(force=True)

    def close(self, state: State, logger: Logger) -> None:
        self._flush_train()
        if self._file is not None:
            self._file.close()
            self._file = None


def last_logged_step(path: str | Path) -> int:
    """The last training step in a metrics.jsonl, 0 before the first; read by whatever watches a run from outside
    (tests and gpu-check stopping it part-way). A step's line is written as the next one starts, and a line still
    being written (no closing brace yet) is skipped."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}") and '"phase": "train"' in line]
    return max(steps, default=0)
