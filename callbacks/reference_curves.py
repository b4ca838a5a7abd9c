"""Reference curves for the curve watch: validation top-1 over the fraction of a schedule, from a published file in
``recipes/reference_curves/`` or from a finished run's ``metrics.jsonl``, each with the band its own noise allows.

A reference file is JSON: ``metric`` (``val/acc1``), where it came from (``repository``, ``path``, ``commit``,
``licence``, ``conversion``), and ``runs``, each ``{"arch", "epochs", "top1": [after epoch 1, 2, ...]}``. A run
folder is a reference through what every run writes: its evaluation lines (``callbacks.metrics_file``), its
``recipe.yaml`` for the length of its schedule and its ``summary.json`` for the size of its validation set. Everything is read and checked before training starts, so a
missing, malformed or wrong-metric reference fails in a second with the file's name.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from composer.core import TimeUnit
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from callbacks.metric_names import VALIDATION_LABEL
from recipes.durations import parse_time, steps_in
from recipes.errors import UsageError, suggest
from recipes.loading import RECIPES_DIR, SAVED_RECIPE

REFERENCE_CURVES_DIR = RECIPES_DIR / "reference_curves"
METRIC = f"{VALIDATION_LABEL}/acc1"
METRICS_FILE = "metrics.jsonl"
# The noise of one evaluation, sigma, from each point's distance r to the straight line through its two
# neighbours (the trend cancels): for independent noise on every point r has a standard deviation of sigma x
# sqrt(1.5), and the median of |r| is 0.6745 of that (a normal's), so one deep dip in a reference does not widen
# its band. The run and the reference each carry that noise, so their difference has sqrt(2) x sigma; the band is
# two of those either side.
NORMAL_MEDIAN_ABSOLUTE = 0.6745
NEIGHBOUR_LINE_FACTOR = math.sqrt(1.5)
BAND_DEVIATIONS = 2 * math.sqrt(2)
# A run's summary.json: how many validation images each of its evaluations scored.
SUMMARY = "summary.json"
VALIDATION_IMAGES = "val_images"
# watch.reference=runs/a,runs/b,runs/c: one recipe's runs with other seeds, one reference.
SEED_SEPARATOR = ","
# The fewest evaluations the judged part of a reference needs for its noise to be measured there alone.
MIN_JUDGED_EVALUATIONS = 3
# One source of a reference's noise: (fraction of the schedule, the noise sigma that evaluation suggests).
NoiseSeries = tuple[tuple[float, float], ...]


def neighbour_noise(fractions: list[float], values: list[float]) -> NoiseSeries:
    """Each inner evaluation's distance from the line through its two neighbours, as the noise sigma it suggests
    (the constants above), at its fraction of the schedule."""
    series = []
    for i in range(1, len(values) - 1):
        weight = (fractions[i] - fractions[i - 1]) / (fractions[i + 1] - fractions[i - 1])
        line = values[i - 1] + weight * (values[i + 1] - values[i - 1])
        series.append(
            (fractions[i], abs(values[i] - line) / (NORMAL_MEDIAN_ABSOLUTE * NEIGHBOUR_LINE_FACTOR))
        )
    return tuple(series)


def noise_sigma(fractions: list[float], values: list[float]) -> float:
    """The noise of one evaluation of a curve (in the values' unit): the median over its inner evaluations."""
    return statistics.median(sigma for _, sigma in neighbour_noise(fractions, values))


@dataclass(frozen=True)
class ReferenceCurve:
    """One reference run: its top-1 (0-1) at each evaluation, placed at the fraction of its schedule done."""

    # What people read: "ffcv_rn50.json: resnet50, 88 epochs" or "runs/NAME".
    name: str
    # Fraction of its schedule at each evaluation, increasing, in (0, 1].
    fractions: tuple[float, ...]
    # val/acc1 at each, 0-1.
    values: tuple[float, ...]
    # Its schedule in epochs (None when its recipe does not say: the nearest-length choice then has one curve).
    epochs: float | None
    # The noise of one of its evaluations (sigma, 0-1, noise_sigma); None when watch.band sets the band.
    noise: float | None
    # watch.band (0-1): the band's half-width everywhere, in place of the derived one.
    fixed_band: float | None = None
    # Validation images behind each of its evaluations, when known (a run folder's summary.json).
    validation_images: int | None = None
    # Where ``noise`` was measured, source by source (the run; for several seeds, each run and their spread):
    # ``judged_from`` measures it again over the part of the schedule the watch judges.
    noise_series: tuple[NoiseSeries, ...] = ()
    # The fraction of the schedule from which ``noise`` was measured (0: the whole curve).
    noise_from: float = 0.0

    def judged_from(self, fraction: float) -> ReferenceCurve:
        """This curve with its noise measured over its evaluations from ``fraction`` of the schedule on, where the
        watch judges (watch.grace). A curve's first evaluations (warm-up, the LR's peak, BatchNorm statistics
        settling) jump by tens of points from one to the next; measured on them, a short reference's band came to
        ±11.9 points on a digits run that ends at 99 %, and any run would pass at the end. The noise is the
        largest over the sources of the median of each source's judged evaluations (the formula of the whole
        curve); with fewer than MIN_JUDGED_EVALUATIONS of them in a source, the whole curve's noise stands."""
        if self.noise is None or not self.noise_series or fraction <= 0:
            return self
        judged = tuple(
            tuple(point for point in series if point[0] >= fraction - 1e-9) for series in self.noise_series
        )
        if any(len(series) < MIN_JUDGED_EVALUATIONS for series in judged):
            return self
        return replace(self, noise=_median_noise(judged), noise_from=fraction)

    def band(self, value: float, validation_images: int | None = None) -> float:
        """The band's half-width (0-1) where the reference is at ``value``: watch.band, or BAND_DEVIATIONS x sigma,
        sigma the larger of the reference's own noise and the sampling noise of the smaller validation set of the
        two runs at that accuracy, sqrt(p (1 - p) / n) (a curve measured on the same few hundred images at every
        evaluation wobbles less than another run does)."""
        if self.fixed_band is not None:
            return self.fixed_band
        sizes = [size for size in (validation_images, self.validation_images) if size]
        sampling = math.sqrt(value * (1 - value) / min(sizes)) if sizes else 0.0
        return BAND_DEVIATIONS * max(self.noise or 0.0, sampling)

    def describe_band(self, validation_images: int | None = None) -> str:
        """How the band is set, in the words of the run's first line."""
        if self.fixed_band is not None:
            return f"±{100 * self.fixed_band:.1f} points (watch.band)"
        images = (
            f" and the sampling noise of {validation_images} validation images" if validation_images else ""
        )
        where = f" from {100 * self.noise_from:.0f} % of its schedule on" if self.noise_from else ""
        return (
            f"±2.8 sigma, sigma the larger of the reference's own noise from one evaluation to the next{where} "
            f"({100 * (self.noise or 0.0):.1f} points){images}"
        )

    def at(self, fraction: float) -> float | None:
        """The reference's top-1 at ``fraction`` of its schedule, interpolated linearly between its evaluations;
        None before its first evaluation (nothing to compare with) or past its end."""
        if fraction < self.fractions[0] - 1e-9 or fraction > self.fractions[-1] + 1e-9:
            return None
        return float(np.interp(fraction, self.fractions, self.values))


@dataclass(frozen=True)
class Reference:
    """A reference file or run folder, read and checked: one curve or several of different lengths."""

    path: Path
    curves: tuple[ReferenceCurve, ...]

    def nearest(self, epochs: float) -> ReferenceCurve:
        """The curve whose schedule is as long as ``epochs``, or the nearest in length (the longer on a tie)."""
        return min(
            self.curves,
            key=lambda curve: (
                math.inf if curve.epochs is None else abs(curve.epochs - epochs),
                -(curve.epochs or 0),
            ),
        )


def resolve_reference(text: str) -> Path:
    """``watch.reference`` as a path: a name in recipes/reference_curves/ (``ffcv_rn50``), a run folder or its
    ``metrics.jsonl``, or a reference file; an error listing the shipped names when nothing is there."""
    shipped = sorted(path.stem for path in REFERENCE_CURVES_DIR.glob("*.json"))
    for candidate in (Path(text), REFERENCE_CURVES_DIR / text, REFERENCE_CURVES_DIR / f"{text}.json"):
        if candidate.exists():
            return candidate
    raise UsageError(
        f"watch.reference '{text}' not found: it is not a run folder, a metrics.jsonl or a reference file, nor a "
        f"name in {REFERENCE_CURVES_DIR} ({', '.join(shipped)}).{suggest(text, shipped)} Give a finished run's "
        "folder (watch.reference=runs/NAME) or one of those names."
    )


def read_reference(text: str, band_points: float | None = None) -> Reference:
    """Read and check the reference ``watch.reference`` names; ``band_points`` (watch.band, in points of top-1)
    replaces the band derived from each curve's noise (``ReferenceCurve.band``)."""
    if SEED_SEPARATOR in text:
        runs = [part.strip() for part in text.split(SEED_SEPARATOR) if part.strip()]
        return Reference(resolve_reference(runs[0]), (_seeds_curve(runs, band_points),))
    path = resolve_reference(text)
    if path.is_dir() or path.suffix == ".jsonl":
        curves = (_run_curve(path, band_points),)
    else:
        curves = _file_curves(path, band_points)
    return Reference(path, curves)


def _seeds_curve(runs: list[str], band_points: float | None) -> ReferenceCurve:
    """Several finished runs of one recipe (other seeds) as one reference: their mean top-1 at the first run's
    evaluations, and for sigma the larger of the runs' own noise from one evaluation to the next and the spread
    between seeds (their standard deviation at each evaluation, the median over evaluations). A seed's run sits
    a point or two above or below another for a whole schedule, which one run's wobble cannot show; the band then
    allows for it."""
    if len(runs) < 2:
        raise UsageError(
            f"watch.reference '{SEED_SEPARATOR.join(runs)}': several runs are separated by '{SEED_SEPARATOR}' "
            "and need at least two; give one run folder alone without the separator."
        )
    curves = [_run_curve(resolve_reference(run), band_points) for run in runs]
    first = curves[0]
    for run, curve in zip(runs[1:], curves[1:], strict=True):
        if curve.epochs != first.epochs:
            raise UsageError(
                f"watch.reference: {run} ran {curve.epochs} epochs and {runs[0]} {first.epochs}: the runs of a "
                "several-seed reference are one recipe with other seeds, the same schedule."
            )
    at_first = np.array(
        [[float(np.interp(f, c.fractions, c.values)) for f in first.fractions] for c in curves]
    )
    noise, series = None, ()
    if band_points is None:
        spread = tuple(zip(first.fractions, map(float, at_first.std(axis=0, ddof=1)), strict=True))
        series = (spread, *(series for curve in curves for series in curve.noise_series))
        noise = _median_noise(series)
    return ReferenceCurve(
        f"{len(curves)} seeds: {', '.join(runs)}",
        first.fractions,
        tuple(float(value) for value in at_first.mean(axis=0)),
        first.epochs,
        noise,
        first.fixed_band,
        min(curve.validation_images or 0 for curve in curves) or None,
        series,
    )


def _noise(
    path: Path, fractions: list[float], values: list[float], band_points: float | None
) -> tuple[NoiseSeries, ...]:
    """Where a curve's noise is measured (neighbour_noise), or nothing when watch.band is given; at least 3
    evaluations to measure it."""
    if band_points is not None:
        return ()
    if len(values) < 3:
        raise UsageError(
            f"watch.reference {path} has {len(values)} evaluation(s); the band is derived from the reference's "
            "noise between consecutive evaluations, which needs at least 3. Give a reference that evaluated more "
            "often, or set the band yourself (watch.band=POINTS)."
        )
    return (neighbour_noise(fractions, values),)


def _file_curves(path: Path, band_points: float | None) -> tuple[ReferenceCurve, ...]:
    """The curves of a reference file, each checked: the metric, the epochs and one top-1 (0-1) per epoch."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"watch.reference {path} is not a JSON reference file: {error}.") from error
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not data["runs"]:
        raise UsageError(
            f"watch.reference {path} has no 'runs' list; a reference file holds 'metric' and 'runs', each "
            "{'arch', 'epochs', 'top1': [...]} (see recipes/reference_curves/ffcv_rn50.json)."
        )
    if data.get("metric") != METRIC:
        raise UsageError(
            f"watch.reference {path} holds metric '{data.get('metric')}', not {METRIC}: the watch compares "
            "validation top-1 and would compare unlike numbers."
        )
    curves = []
    fixed_band = None if band_points is None else band_points / 100
    for index, run in enumerate(data["runs"]):
        epochs, top1 = (run.get("epochs"), run.get("top1")) if isinstance(run, dict) else (None, None)
        where = f"watch.reference {path}, runs[{index}]"
        if not isinstance(epochs, int) or epochs < 1 or not isinstance(top1, list):
            raise UsageError(f"{where} needs 'epochs' (a positive whole number) and 'top1' (a list).")
        if len(top1) != epochs:
            raise UsageError(
                f"{where} has {len(top1)} top1 values for {epochs} epochs: one per epoch, in order."
            )
        if not all(isinstance(value, int | float) and 0 <= value <= 1 for value in top1):
            raise UsageError(
                f"{where}: every top1 value must be a number from 0 to 1 (a fraction, as {METRIC})."
            )
        fractions = [(epoch + 1) / epochs for epoch in range(epochs)]
        series = _noise(path, fractions, top1, band_points)
        name = f"{path.name}: {run.get('arch', 'a run')}, {epochs} epochs"
        curves.append(
            ReferenceCurve(
                name,
                tuple(fractions),
                tuple(map(float, top1)),
                float(epochs),
                _median_noise(series),
                fixed_band,
                noise_series=series,
            )
        )
    return tuple(curves)


def _evaluations(metrics: Path) -> tuple[list[tuple[int, int, float]], set[str]]:
    """(step, epoch, val/acc1) of each evaluation line with a finite top-1, by step (a step logged again after a
    resume replaces the first), and the evaluation metrics the file logs."""
    by_step: dict[int, tuple[int, int, float]] = {}
    logged: set[str] = set()
    for number, text in enumerate(metrics.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.endswith("}"):
            continue  # a line cut short by a crash
        try:
            line = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"watch.reference {metrics} line {number} is not JSON: {error}.") from error
        if not isinstance(line, dict) or line.get("phase") != "eval":
            continue
        logged.update(name for name in line if "/" in name)
        value = line.get(METRIC)
        if isinstance(value, int | float) and math.isfinite(value):
            by_step[int(line["step"])] = (int(line["step"]), int(line.get("epoch", 0)), float(value))
    return sorted(by_step.values()), logged


def _run_curve(path: Path, band_points: float | None) -> ReferenceCurve:
    """A finished run's curve from its metrics.jsonl, placed on its schedule by its recipe.yaml's max_duration."""
    metrics = path / METRICS_FILE if path.is_dir() else path
    if not metrics.is_file():
        raise UsageError(
            f"watch.reference {path} has no {METRICS_FILE}: a reference run is a finished run's folder "
            "(its save_folder, where train.py writes metrics.jsonl)."
        )
    evaluations, logged = _evaluations(metrics)
    if not evaluations:
        other = f" (it logs {', '.join(sorted(logged))}: another kind of run)" if logged else ""
        raise UsageError(
            f"watch.reference {metrics} has no {METRIC} evaluations{other}; the watch compares {METRIC}."
        )
    last_step, last_epoch, _ = evaluations[-1]
    recipe_path = metrics.parent / SAVED_RECIPE
    epochs = None
    name = str(metrics.parent)
    if recipe_path.is_file():
        epochs = _check_finished(metrics, recipe_path, last_step, last_epoch)
    else:
        name += f" (no {SAVED_RECIPE} beside it: its last evaluation, step {last_step}, taken as the end)"
    steps = [step for step, _, _ in evaluations]
    values = [value for _, _, value in evaluations]
    fractions = [step / last_step for step in steps] if last_step else [1.0] * len(steps)
    series = _noise(metrics, fractions, values, band_points)
    fixed_band = None if band_points is None else band_points / 100
    return ReferenceCurve(
        name,
        tuple(fractions),
        tuple(values),
        epochs,
        _median_noise(series),
        fixed_band,
        _validation_images(metrics.parent),
        series,
    )


def _median_noise(series: tuple[NoiseSeries, ...]) -> float | None:
    """A curve's noise over its whole schedule: the largest of its sources' medians (None: none measured)."""
    return max((statistics.median(sigma for _, sigma in source) for source in series), default=None)


def _validation_images(folder: Path) -> int | None:
    """How many validation images the run in ``folder`` scored each time (its summary.json), when it says."""
    try:
        images = json.loads((folder / SUMMARY).read_text(encoding="utf-8")).get(VALIDATION_IMAGES)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return images if isinstance(images, int) and images > 0 else None


def _check_finished(metrics: Path, recipe_path: Path, last_step: int, last_epoch: int) -> float | None:
    """Refuse a run that stopped before its schedule's end (its curve would be stretched over the whole schedule);
    return its schedule in epochs when its max_duration is in epochs."""
    key = f"max_duration in {recipe_path}"
    try:
        recipe = OmegaConf.load(recipe_path)
        max_duration = parse_time(recipe.max_duration, key)
        if max_duration.unit == TimeUnit.EPOCH:
            done, planned, unit = last_epoch, int(max_duration.value), "epoch"
        else:
            batch = int(recipe.global_batch_size)
            planned = steps_in(recipe.max_duration, key, batches_per_epoch=1, global_batch_size=batch)
            done, unit = last_step, "step"
    except (OmegaConfBaseException, OSError, ValueError) as error:
        raise UsageError(f"watch.reference: cannot read {key}: {error}.") from error
    if done < planned:
        raise UsageError(
            f"watch.reference {metrics.parent}: its last {METRIC} evaluation is at {unit} {done} of {planned} (its "
            f"{SAVED_RECIPE}'s max_duration): a reference must be a finished run, or its curve would be stretched "
            "over the whole schedule. Resume it to the end, or name another run."
        )
    return float(planned) if unit == "epoch" else None
