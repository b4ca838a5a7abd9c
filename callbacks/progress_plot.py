"""``progress.png`` of a pretraining run: the training loss per logged step, the k-NN monitor's top-1 per
evaluation and the collapse signal ``moco/output_std_ratio`` when the run logs it, one panel each on a shared
step axis, drawn from the run's ``metrics.jsonl`` alone (``callbacks.metrics_file``), so a crashed or preempted
run's file plots the same way."""

from __future__ import annotations

import json
from pathlib import Path

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from callbacks.knn_monitor import KNN_ACC1
from callbacks.metric_names import TRAIN_LOSS

OUTPUT_STD_RATIO = "moco/output_std_ratio"
PROGRESS_PLOT = "progress.png"


def read_series(metrics_path: Path, names: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs per metric name, over every line of any phase that holds it; a step logged again
    after a resume replaces the first value, and a non-finite value (written as a string) is left out."""
    series: dict[str, dict[int, float]] = {name: {} for name in names}
    for text in metrics_path.read_text(encoding="utf-8").splitlines():
        if not text.endswith("}"):
            continue  # a line cut short by a crash
        line = json.loads(text)
        for name in names:
            if isinstance(line.get(name), int | float):
                series[name][int(line["step"])] = float(line[name])
    return {name: sorted(values.items()) for name, values in series.items()}


def plot_progress(metrics_path: Path, output_path: Path) -> Path:
    """Write the progress figure of the run whose metrics file is ``metrics_path``; return ``output_path``."""
    from matplotlib.figure import Figure

    series = read_series(metrics_path, (TRAIN_LOSS, KNN_ACC1, OUTPUT_STD_RATIO))
    panels = [TRAIN_LOSS, KNN_ACC1] + ([OUTPUT_STD_RATIO] if series[OUTPUT_STD_RATIO] else [])
    figure = Figure(figsize=(8, 2.4 * len(panels) + 0.6), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for panel, name in zip(axes, panels, strict=True):
        steps = [step for step, _ in series[name]]
        values = [value for _, value in series[name]]
        if name == TRAIN_LOSS:
            panel.plot(steps, values, color="tab:blue", linewidth=1.2)
            panel.set_ylabel("training loss")
        elif name == KNN_ACC1:
            panel.plot(steps, [100 * value for value in values], color="tab:green", marker="o", linewidth=1.2)
            panel.set_ylabel("k-NN top-1 (%)")
            if not values:
                panel.text(0.5, 0.5, "no k-NN evaluation logged", transform=panel.transAxes, ha="center")
        else:
            panel.plot(steps, values, color="tab:purple", linewidth=1.2)
            panel.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="healthy: 1/sqrt(d)")
            panel.set_ylim(bottom=0)
            panel.set_ylabel("output std / (1/sqrt(d))")
            panel.legend(fontsize=8, loc="lower right")
        panel.grid(True, alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    axes[0].set_title(f"{metrics_path.parent.name}: pretraining progress", fontsize=10)
    figure.savefig(output_path, dpi=100)
    return output_path


class ProgressPlot(Callback):
    """Writes ``progress.png`` beside ``metrics.jsonl`` when the Trainer closes (global rank 0).

    At ``close``, not ``FIT_END``: Composer runs the loggers' ``fit_end`` after the callbacks' (core/engine.py:
    303-305, 0.32.1), so the metrics file's last line is written only then; loggers come first in
    ``state.callbacks`` (trainer.py:1366), so at ``close`` the file is complete. A preempted run closes too and
    gets the figure of its progress so far.
    """

    def __init__(self, metrics_path: str | Path) -> None:
        self.metrics_path = Path(metrics_path)

    def close(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() == 0 and self.metrics_path.is_file():
            plot_progress(self.metrics_path, self.metrics_path.parent / PROGRESS_PLOT)
