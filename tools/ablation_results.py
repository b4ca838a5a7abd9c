"""An ablation study's results: each run read back from its folder, each variant compared with the base with an
honest uncertainty, and the tables (``results.md``, ``results.csv``, ``results.json``) and plots people read.

The statistics. Every variant runs with the same seeds as the base, and a seed fixes the initial weights, the
data order and the augmentation draws, so the base and a variant trained with one seed differ only by the
variant's change: the difference is taken seed by seed (a paired comparison), which removes the seed-to-seed
spread both share. Its confidence interval is Student's t on the per-seed differences (n - 1 degrees of freedom).
Where fewer than two seeds finished in both, the variant's and the base's means are compared unpaired (Welch's
t interval). The verdict is read off the interval alone: "helps" when all of it lies above zero, "hurts" when all
of it lies below, "within noise" otherwise; one seed gives no interval and no verdict.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from callbacks.metric_names import VALIDATION_LABEL
from recipes.studies import BASE_VARIANT, Study

# A run's own record of how it ended, written by tools.ablate beside Composer's outputs.
STATUS_FILE = "ablate_status.json"
DONE, FAILED, INTERRUPTED, PENDING = "done", "failed", "interrupted", "pending"
HELPS, HURTS, WITHIN_NOISE, NO_VERDICT = "helps", "hurts", "within noise", "too few seeds"
# What each row reports beside the compared metric, from each run's summary.json.
SUMMARY_KEYS = ("val/acc1", "val/acc5", "wall_time_s", "throughput/samples_per_sec")


@dataclass
class RunRecord:
    """One (variant, seed) run as its folder tells it."""

    variant: str
    seed: int
    folder: str
    status: str
    log: str
    exit_code: int | None = None
    reason: str = ""
    attempts: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    # (epoch, value of the study's metric) at each evaluation.
    curve: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Difference:
    """A variant's metric minus the base's: the mean difference and its confidence interval."""

    mean: float
    low: float
    high: float
    method: str
    seeds: int

    @property
    def verdict(self) -> str:
        """The plain reading of the interval (the module docstring's rule)."""
        if not math.isfinite(self.low):
            return NO_VERDICT
        if self.low > 0:
            return HELPS
        if self.high < 0:
            return HURTS
        return WITHIN_NOISE


@dataclass
class VariantRow:
    """One row of the results table."""

    variant: str
    runs: int
    finished: int
    failed: list[str]
    mean: dict[str, float]
    std: dict[str, float]
    difference: Difference | None
    time_ratio: float | None

    @property
    def verdict(self) -> str:
        if self.variant == BASE_VARIANT:
            return "reference"
        if self.difference is None:
            return "no finished runs" if not self.finished else NO_VERDICT
        return self.difference.verdict


def run_folder(study: Study, variant: str, seed: int) -> Path:
    """Where one run's checkpoints, logs and summary live (one rule for the runner and the reader)."""
    return study.output / "runs" / variant / f"seed{seed}"


def read_status(folder: Path) -> dict[str, Any]:
    """The run's status record, or an empty one for a run never started."""
    path = folder / STATUS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_curve(folder: Path, metric: str) -> list[tuple[float, float]]:
    """The metric at each evaluation in the run's metrics.jsonl (the last one per epoch, as a resumed run may
    repeat an epoch it had evaluated before it was stopped)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[float, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("phase") == "eval" and metric in record:
            by_epoch[float(record["epoch"])] = float(record[metric])
    return sorted(by_epoch.items())


def read_run(study: Study, variant: str, seed: int) -> RunRecord:
    """A run's record from its folder: status, summary figures and validation curve."""
    folder = run_folder(study, variant, seed)
    status = read_status(folder)
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    state = status.get("status", PENDING)
    if state == DONE and study.metric not in summary:
        state, status["reason"] = FAILED, f"summary.json has no '{study.metric}'"
    return RunRecord(
        variant=variant,
        seed=seed,
        folder=str(folder),
        status=state,
        log=str(folder / "train.log"),
        exit_code=status.get("exit_code"),
        reason=status.get("reason", ""),
        attempts=int(status.get("attempts", 0)),
        summary={key: summary[key] for key in SUMMARY_KEYS if isinstance(summary.get(key), int | float)},
        curve=read_curve(folder, study.metric),
    )


def paired_difference(variant: dict[int, float], base: dict[int, float], confidence: float) -> Difference:
    """The variant's metric minus the base's, seed by seed where two or more seeds finished in both (paired
    t interval), else from the two means (Welch's t interval); an infinite interval when neither is possible."""
    common = sorted(set(variant) & set(base))
    quantile = (1 + confidence) / 2
    if len(common) >= 2:
        differences = [variant[seed] - base[seed] for seed in common]
        mean = statistics.fmean(differences)
        error = statistics.stdev(differences) / math.sqrt(len(differences))
        half = stats.t.ppf(quantile, len(differences) - 1) * error
        return Difference(mean, mean - half, mean + half, "paired t", len(common))
    values, reference = list(variant.values()), list(base.values())
    mean = statistics.fmean(values) - statistics.fmean(reference) if values and reference else math.nan
    if len(values) < 2 or len(reference) < 2:
        return Difference(mean, -math.inf, math.inf, "none", min(len(values), len(reference)))
    var_v, var_b = statistics.variance(values) / len(values), statistics.variance(reference) / len(reference)
    error = math.sqrt(var_v + var_b)
    if error == 0:
        return Difference(mean, mean, mean, "Welch t", min(len(values), len(reference)))
    freedom = (var_v + var_b) ** 2 / (var_v**2 / (len(values) - 1) + var_b**2 / (len(reference) - 1))
    half = stats.t.ppf(quantile, freedom) * error
    return Difference(mean, mean - half, mean + half, "Welch t", min(len(values), len(reference)))


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarise(study: Study, runs: list[RunRecord]) -> list[VariantRow]:
    """One row per variant, in the study's order: means and spreads over the finished seeds, the difference
    from the base with its interval, and the wall time relative to the base."""
    finished = {
        variant.name: {run.seed: run for run in runs if run.variant == variant.name and run.status == DONE}
        for variant in study.variants
    }
    base = {seed: run.summary[study.metric] for seed, run in finished[BASE_VARIANT].items()}
    base_time = _spread(
        [run.summary.get("wall_time_s", math.nan) for run in finished[BASE_VARIANT].values()]
    )[0]
    rows = []
    for variant in study.variants:
        done = finished[variant.name]
        means, stds = {}, {}
        for key in dict.fromkeys((study.metric, *SUMMARY_KEYS)):
            means[key], stds[key] = _spread([run.summary[key] for run in done.values() if key in run.summary])
        values = {seed: run.summary[study.metric] for seed, run in done.items()}
        difference = (
            paired_difference(values, base, study.confidence)
            if variant.name != BASE_VARIANT and values and base
            else None
        )
        time_ratio = (
            means["wall_time_s"] / base_time if done and base_time and math.isfinite(base_time) else None
        )
        rows.append(
            VariantRow(
                variant=variant.name,
                runs=sum(run.variant == variant.name for run in runs),
                finished=len(done),
                failed=[run.log for run in runs if run.variant == variant.name and run.status == FAILED],
                mean=means,
                std=stds,
                difference=difference,
                time_ratio=time_ratio,
            )
        )
    return rows


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _plus_minus(mean: float, std: float, digits: int = 4) -> str:
    text = _number(mean, digits)
    return text if not math.isfinite(std) else f"{text} ± {_number(std, digits)}"


def _difference_text(difference: Difference | None) -> str:
    if difference is None:
        return ""
    if not math.isfinite(difference.low):
        return f"{difference.mean:+.4f}" if math.isfinite(difference.mean) else ""
    return f"{difference.mean:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]"


def markdown_table(study: Study, rows: list[VariantRow], runs: list[RunRecord]) -> str:
    """results.md: the table, the rule the verdicts follow, and the runs that failed with their logs."""
    metric = study.metric
    percent = round(100 * study.confidence)
    lines = [
        f"# Ablation study `{study.name}`",
        "",
        *([study.description, ""] if study.description else []),
        f"Base recipe `{study.recipe}`; seeds {', '.join(map(str, study.seeds))}; mean ± standard deviation over "
        f"the seeds that finished. Δ is the variant's {metric} minus the base's, with its {percent} % confidence "
        "interval (paired by seed; Welch's unpaired interval when fewer than two seeds finished in both).",
        "Verdict: **helps** when the whole interval is above 0, **hurts** when it is below 0, **within noise** "
        "otherwise; one seed gives no interval.",
        "",
        f"| variant | finished | {metric} | val/acc5 | Δ {metric} [{percent} % CI] | verdict | wall time (s) "
        "| time vs base | images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "" if row.time_ratio is None else f"{row.time_ratio:.2f}x"
        lines.append(
            f"| {row.variant} | {row.finished}/{row.runs} | {_plus_minus(row.mean[metric], row.std[metric])} "
            f"| {_plus_minus(row.mean['val/acc5'], row.std['val/acc5'])} | {_difference_text(row.difference)} "
            f"| {row.verdict} | {_plus_minus(row.mean['wall_time_s'], row.std['wall_time_s'], 1)} | {ratio} "
            f"| {_number(row.mean['throughput/samples_per_sec'], 1)} |"
        )
    unfinished = [run for run in runs if run.status != DONE]
    if unfinished:
        lines += [
            "",
            "## Runs that did not finish",
            "",
            "| variant | seed | status | reason | log |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {run.variant} | {run.seed} | {run.status} | {run.reason} | `{run.log}` |"
            for run in unfinished
        ]
    lines += [
        "",
        "![accuracy against wall time](accuracy_vs_time.png)",
        "",
        "![validation curves](validation_curves.png)",
        "",
    ]
    return "\n".join(lines)


def write_csv(path: Path, study: Study, rows: list[VariantRow]) -> None:
    """results.csv: one line per variant, numbers unformatted."""
    metric = study.metric
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "variant",
                "finished",
                "runs",
                f"{metric}_mean",
                f"{metric}_std",
                "val/acc5_mean",
                "val/acc5_std",
                "delta_mean",
                "delta_low",
                "delta_high",
                "delta_method",
                "verdict",
                "wall_time_s_mean",
                "time_ratio",
                "images_per_s_mean",
            ]
        )
        for row in rows:
            difference = row.difference
            writer.writerow(
                [
                    row.variant,
                    row.finished,
                    row.runs,
                    row.mean[metric],
                    row.std[metric],
                    row.mean["val/acc5"],
                    row.std["val/acc5"],
                    *(
                        ("", "", "", "")
                        if difference is None
                        else (difference.mean, difference.low, difference.high, difference.method)
                    ),
                    row.verdict,
                    row.mean["wall_time_s"],
                    "" if row.time_ratio is None else row.time_ratio,
                    row.mean["throughput/samples_per_sec"],
                ]
            )


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null, so the file is plain JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def plot_accuracy_against_time(
    path: Path, study: Study, rows: list[VariantRow], runs: list[RunRecord]
) -> None:
    """Each variant's seeds as small points and its mean as a large one with ±1 std bars in both directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5))
    colours = plt.get_cmap("tab10")
    for index, row in enumerate(rows):
        colour = colours(index % 10)
        done = [run for run in runs if run.variant == row.variant and run.status == DONE]
        if not done:
            continue
        axes.scatter(
            [run.summary.get("wall_time_s", math.nan) for run in done],
            [run.summary[study.metric] for run in done],
            color=colour,
            alpha=0.35,
            s=18,
        )
        axes.errorbar(
            row.mean["wall_time_s"],
            row.mean[study.metric],
            xerr=0 if not math.isfinite(row.std["wall_time_s"]) else row.std["wall_time_s"],
            yerr=0 if not math.isfinite(row.std[study.metric]) else row.std[study.metric],
            fmt="o",
            color=colour,
            markersize=8,
            capsize=3,
            label=f"{row.variant} ({row.verdict})",
        )
    axes.set_xlabel("wall time per run (s)")
    axes.set_ylabel(study.metric)
    axes.set_title(f"{study.name}: {study.metric} against wall time (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_validation_curves(path: Path, study: Study, rows: list[VariantRow], runs: list[RunRecord]) -> None:
    """Each variant's metric per epoch: the mean over its finished seeds, with the seeds' range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7.5, 5))
    colours = plt.get_cmap("tab10")
    for index, row in enumerate(rows):
        curves = [dict(run.curve) for run in runs if run.variant == row.variant and run.status == DONE]
        epochs = sorted(set().union(*curves)) if curves else []
        if not epochs:
            continue
        values = [[curve[epoch] for curve in curves if epoch in curve] for epoch in epochs]
        colour = colours(index % 10)
        axes.plot(epochs, [statistics.fmean(v) for v in values], color=colour, marker=".", label=row.variant)
        axes.fill_between(
            epochs, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.15
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(study.metric)
    axes.set_title(
        f"{study.name}: validation {study.metric.removeprefix(VALIDATION_LABEL + '/')} (mean, seed range)"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(study: Study) -> dict[str, Path]:
    """Read every run of the study and write results.md, results.csv, results.json and the two plots into the
    study's output folder; returns their paths by name."""
    runs = [read_run(study, variant.name, seed) for variant in study.variants for seed in study.seeds]
    rows = summarise(study, runs)
    study.output.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": study.output / "results.md",
        "csv": study.output / "results.csv",
        "json": study.output / "results.json",
        "accuracy_vs_time": study.output / "accuracy_vs_time.png",
        "validation_curves": study.output / "validation_curves.png",
    }
    paths["markdown"].write_text(markdown_table(study, rows, runs), encoding="utf-8")
    write_csv(paths["csv"], study, rows)
    document = {
        "study": study.name,
        "recipe": study.recipe,
        "metric": study.metric,
        "confidence": study.confidence,
        "seeds": list(study.seeds),
        "variants": [
            {**asdict(row), "verdict": row.verdict, "overrides": list(variant.overrides)}
            for row, variant in zip(rows, study.variants, strict=True)
        ],
        "runs": [asdict(run) for run in runs],
    }
    paths["json"].write_text(json.dumps(_json_safe(document), indent=2) + "\n", encoding="utf-8")
    plot_accuracy_against_time(paths["accuracy_vs_time"], study, rows, runs)
    plot_validation_curves(paths["validation_curves"], study, rows, runs)
    return paths
