"""The curve watch: FFCV's published curves as shipped, comparison by fraction of the schedule, the band from the
reference's own noise, the finding after two evaluations outside it, the stop with its checkpoint and exit status,
a finished run as the reference, and the reference files refused before training."""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from callbacks.curve_watch import (
    BAND,
    CURVE_WATCH_PLOT,
    OUTSIDE_BAND,
    REFERENCE_ACC1,
    WATCH_STOPPED_EXIT_STATUS,
    Comparison,
    CurveWatch,
    build_curve_watch,
    read_watch_reference,
)
from callbacks.findings import read_findings
from callbacks.reference_curves import ReferenceCurve, neighbour_noise, noise_sigma, read_reference
from recipes.errors import UsageError
from training.preflight import load_run_recipe

# libffcv/ffcv-imagenet assets/agg.csv at eebd5afd9dff0344dd6034562435f4c1f639d10b: its header and rows of each of
# its six ResNet-50 runs, as written. "epoch" is the epoch just trained (0 is the first); each run ends with a row
# without train_loss, the same weights evaluated again.
FFCV_AGG_CSV = """\
,timestamp,relative_time,current_lr,top_1,top_5,val_time,train_loss,epoch,uid,model.arch,model.pretrained,resolution.min_res,resolution.max_res,resolution.end_ramp,resolution.start_ramp,data.train_dataset,data.val_dataset,data.num_workers,data.in_memory,lr.step_ratio,lr.step_length,lr.lr_schedule_type,lr.lr,lr.lr_peak_epoch,logging.folder,logging.log_level,validation.batch_size,validation.resolution,validation.lr_tta,training.eval_only,training.batch_size,training.optimizer,training.momentum,training.weight_decay,training.epochs,training.label_smoothing,training.distributed,training.use_blurpool,dist.world_size,dist.address,dist.port,delta
0,2022-01-17 20:07:37.567685120,75.7109067440033,0.8473609134615381,0.059560000896453004,0.17017999291419902,7.9765541553497314,6.212173938751221,0,1330f71e-dd34-4906-8007-34a0a4a45c7a,resnet50,0,160,192,13,11,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,16,0.1,1,1,8,localhost,12355,3
9,2022-01-17 20:14:58.576600064,516.7198216915131,0.728960622710622,0.560779988765716,0.8076400160789491,3.521803855895996,2.918720006942749,9,1330f71e-dd34-4906-8007-34a0a4a45c7a,resnet50,0,160,192,13,11,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,16,0.1,1,1,8,localhost,12355,3
15,2022-01-17 20:21:10.395269376,888.5384910106659,0.000389194139194,0.7376000285148621,0.91839998960495,3.493353128433227,2.237685680389404,15,1330f71e-dd34-4906-8007-34a0a4a45c7a,resnet50,0,160,192,13,11,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,16,0.1,1,1,8,localhost,12355,3
16,2022-01-17 20:21:13.792965888,891.936187505722,0.000389194139194,0.7376000285148621,0.91839998960495,3.397435426712036,,15,1330f71e-dd34-4906-8007-34a0a4a45c7a,resnet50,0,160,192,13,11,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,16,0.1,1,1,8,localhost,12355,3
23,2022-01-17 20:43:26.108089856,1298.4804813861847,0.000247668997668,0.755639970302581,0.927020013332366,3.569347143173217,2.078319311141967,23,bcd029e5-be20-4a41-82b5-436d6d9ee705,resnet50,0,160,192,20,17,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,24,0.1,1,1,8,localhost,12355,4
31,2022-01-17 21:12:46.816068352,1722.3802309036255,0.00018162393162300002,0.765860021114349,0.9347199797630311,3.53401517868042,2.00579285621643,31,661ae019-d51c-4114-a2f5-9a1267b52ed5,resnet50,0,160,192,27,23,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,32,0.1,1,1,8,localhost,12355,5
16,2022-01-17 21:27:44.891233536,860.4046199321747,1.029090755735492,0.475479990243911,0.7317399978637691,3.5110714435577393,2.780781745910644,16,86c4bafe-35c3-49fc-b900-782026338fde,resnet50,0,160,192,34,29,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,40,0.1,1,1,8,localhost,12355,6
55,2022-01-17 22:38:54.043906304,2960.6645386219025,0.00010090218423500001,0.780200004577636,0.940819978713989,3.410004377365112,1.8540146350860591,55,1dd628f8-0ce7-42cb-8b3b-22582887c8d9,resnet50,0,160,192,48,41,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,56,0.1,1,1,8,localhost,12355,8
0,2022-01-17 22:40:47.584848640,75.61944341659546,0.8473609134615381,0.08088000118732401,0.21818000078201202,7.805351257324219,6.3300461769104,0,d8324107-16a6-4a08-97ab-a7aac45d903c,resnet50,0,160,192,76,65,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,88,0.1,1,1,8,localhost,12355,12
4,2022-01-17 22:44:03.989586944,272.0241816043854,1.640761031604054,0.11200000345706901,0.20465999841690002,3.503001928329467,3.5052988529205322,4,d8324107-16a6-4a08-97ab-a7aac45d903c,resnet50,0,160,192,76,65,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,88,0.1,1,1,8,localhost,12355,12
43,2022-01-17 23:15:55.980014336,2184.0146090984344,0.8698307990459151,0.5764999985694881,0.8190199732780451,3.501083850860595,2.584212303161621,43,d8324107-16a6-4a08-97ab-a7aac45d903c,resnet50,0,160,192,76,65,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,88,0.1,1,1,8,localhost,12355,12
44,2022-01-17 23:16:45.186358016,2233.2209527492523,0.8500633571854501,0.6207000017166131,0.850380003452301,3.500033378601074,2.577399492263794,44,d8324107-16a6-4a08-97ab-a7aac45d903c,resnet50,0,160,192,76,65,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,88,0.1,1,1,8,localhost,12355,12
87,2022-01-17 23:56:42.653372672,4630.687967538834,6.335718545020727e-05,0.7842800021171571,0.9426000118255611,3.521161317825317,1.762485980987548,87,d8324107-16a6-4a08-97ab-a7aac45d903c,resnet50,0,160,192,76,65,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,88,0.1,1,1,8,localhost,12355,12
88,2022-01-17 23:56:46.068703488,4634.103298187256,6.335718545020727e-05,0.7842800021171571,0.9426000118255611,3.4150607585906982,,87,d8324107-16a6-4a08-97ab-a7aac45d903c,resnet50,0,160,192,76,65,/mnt/ssd1/train_500_0.5_90.ffcv,/mnt/ssd1/val_500_0.5_90.ffcv,12,1,0.1,30,cyclic,1.7000000000000002,2,/mnt/ssd1/rn50_results,1,512,256,1,0,512,sgd,0.9,0.0001,88,0.1,1,1,8,localhost,12355,12
"""


def ffcv_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(FFCV_AGG_CSV.splitlines()))


# ---- FFCV's published curves, as shipped ----


def test_ffcv_reference_is_the_csv_at_each_published_epoch() -> None:
    """Every quoted row with a train_loss: after epoch e + 1 of E, the reference is that row's top_1, exactly."""
    reference = read_reference("ffcv_rn50")
    trained_rows = [row for row in ffcv_rows() if row["train_loss"]]
    assert {int(row["training.epochs"]) for row in trained_rows} == {16, 24, 32, 40, 56, 88}
    for row in trained_rows:
        epochs, epoch = int(row["training.epochs"]), int(row["epoch"])
        curve = reference.nearest(epochs)
        assert curve.epochs == epochs and row["model.arch"] == "resnet50" and "resnet50" in curve.name
        assert curve.at((epoch + 1) / epochs) == float(row["top_1"]), (epochs, epoch)


def test_ffcv_reference_ends_at_each_runs_final_evaluation_and_names_its_source() -> None:
    """The row without train_loss re-evaluates the last weights: the curve's end is its top_1, and no extra point."""
    reference = read_reference("ffcv_rn50")
    for row in ffcv_rows():
        if not row["train_loss"]:
            curve = reference.nearest(int(row["training.epochs"]))
            assert curve.values[-1] == float(row["top_1"]) and len(curve.values) == curve.epochs
    source = json.loads(reference.path.read_text())
    assert source["repository"] == "libffcv/ffcv-imagenet" and source["path"] == "assets/agg.csv"
    assert source["commit"] == "eebd5afd9dff0344dd6034562435f4c1f639d10b"
    assert source["licence"].startswith("Apache-2.0") and source["metric"] == "val/acc1"


def test_ffcv_reference_interpolates_linearly_between_published_epochs() -> None:
    row_43, row_44 = (
        row for row in ffcv_rows() if row["training.epochs"] == "88" and row["epoch"] in ("43", "44")
    )
    curve = read_reference("ffcv_rn50").nearest(88)
    halfway = (44 + 0.5) / 88  # between the evaluations after epochs 44 and 45
    assert curve.at(halfway) == pytest.approx((float(row_43["top_1"]) + float(row_44["top_1"])) / 2)
    assert curve.at(0.5 / 88) is None  # before its first evaluation: nothing to compare with


# ---- by fraction of the schedule ----


class Accuracy:
    """Stands in for a computed torchmetrics accuracy."""

    def __init__(self, value: float) -> None:
        self.value = value

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.value)


class FakeState:
    """What the watch reads at an evaluation's end, and what stopping a run changes."""

    def __init__(self) -> None:
        self.dataloader_label = "val"
        self.run_name = "probe"
        self.eval_metrics: dict[str, dict[str, Accuracy]] = {}
        self.timestamp: Any = None
        self.evaluators: list[Any] = []
        self.callbacks: list[Any] = []
        self.stopped = False

    def stop_training(self) -> None:
        self.stopped = True


class RecordingLogger:
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.logged.append(dict(metrics))


def evaluate_at(watch: CurveWatch, state: FakeState, logger: RecordingLogger, step: int, acc1: float) -> None:
    """One validation evaluation of ``acc1`` at ``step`` reaching the watch."""
    state.timestamp = type("Timestamp", (), {"batch": step})()
    state.eval_metrics = {"val": {"acc1": Accuracy(acc1)}}
    watch.eval_end(state, logger)  # type: ignore[arg-type]


def watch_for(recipe_epochs: int, folder: Path, batches_per_epoch: int = 10, **watch: Any) -> CurveWatch:
    """The watch train.py builds for the FFCV recipe at another length."""
    overrides = [f"max_duration={recipe_epochs}ep", *(f"watch.{key}={value}" for key, value in watch.items())]
    config = load_run_recipe("ffcv_rn50_88ep", overrides)
    [callback] = build_curve_watch(
        config, read_watch_reference(config), folder, str(folder), batches_per_epoch
    )
    assert isinstance(callback, CurveWatch)
    return callback


def test_a_run_is_compared_at_the_same_fraction_of_its_schedule_not_the_same_epoch(tmp_path: Path) -> None:
    """After 10 epochs a 16-epoch run is 62.5 % through: it meets the 16-epoch curve's tenth value (56.1 %), not
    the 88-epoch run's after 10 epochs (45.6 %); a 176-epoch run, with no curve of its length, halfway meets the
    nearest (88 epochs) halfway, after its epoch 44."""
    rows = {(row["training.epochs"], row["epoch"]): float(row["top_1"]) for row in ffcv_rows()}
    for epochs, step, published in [(16, 100, rows["16", "9"]), (176, 880, rows["88", "43"])]:
        watch = watch_for(epochs, tmp_path)
        state, logger = FakeState(), RecordingLogger()
        evaluate_at(watch, state, logger, step=step, acc1=0.5)
        [comparison] = watch.comparisons
        assert comparison.reference == published and logger.logged[-1][REFERENCE_ACC1] == published
    assert watch.curve.epochs == 88


def test_the_line_says_where_in_the_schedule_the_run_stands_against_the_reference() -> None:
    comparison = Comparison(step=31, fraction=0.31, acc1=0.412, reference=0.52, band=0.025)
    assert comparison.line() == (
        "curve watch: at 31 % of the schedule: val top-1 41.2 % against the reference's 52.0 % (band ±2.5): "
        "10.8 points under, under the band"
    )
    inside = Comparison(step=31, fraction=0.31, acc1=0.53, reference=0.52, band=0.025)
    assert inside.line().endswith("(band ±2.5): 1.0 points over") and inside.side == 0


# ---- the band ----


def test_band_is_two_point_eight_times_the_noise_on_the_reference_trend() -> None:
    """A rising, bending curve with independent noise of 1.5 points: sigma 1.5 points, the curve's trend not
    counted, and the band 2 x sqrt(2) x 1.5 = 4.2 points."""
    generator = random.Random(0)
    fractions = [(i + 1) / 4000 for i in range(4000)]
    values = [0.8 * f**0.5 + generator.gauss(0, 0.015) for f in fractions]
    sigma = noise_sigma(fractions, values)
    assert sigma == pytest.approx(0.015, rel=0.05)
    curve = ReferenceCurve("noisy", tuple(fractions), tuple(values), None, sigma)
    assert curve.band(0.5) == pytest.approx(2 * 2**0.5 * sigma)


def test_one_deep_dip_in_the_reference_does_not_widen_its_band() -> None:
    """FFCV's 88-epoch run falls from 34.8 % to 11.2 % after epoch 5 and recovers: the median ignores it."""
    generator = random.Random(1)
    fractions = [(i + 1) / 88 for i in range(88)]
    values = [0.2 + 0.6 * f + generator.gauss(0, 0.01) for f in fractions]
    dipped = [*values[:4], values[4] - 0.24, *values[5:]]
    assert noise_sigma(fractions, dipped) == pytest.approx(noise_sigma(fractions, values), rel=0.15)


def test_a_small_validation_set_widens_the_band_to_its_sampling_noise(tmp_path: Path) -> None:
    """A smooth reference at 90 %: 360 validation images (the digits') wobble by sqrt(0.9 x 0.1 / 360) = 1.6
    points from run to run, so a run 3 points under is inside; on ImageNet's 50,000 the same run is outside."""
    fractions = tuple((i + 1) / 10 for i in range(10))
    smooth = ReferenceCurve("smooth", fractions, (0.9,) * 10, 10.0, noise=0.001)
    assert smooth.band(0.9, 360) == pytest.approx(2 * 2**0.5 * (0.9 * 0.1 / 360) ** 0.5)
    for images, side in [(360, 0), (50_000, -1)]:
        watch = CurveWatch(smooth, 100, tmp_path, str(tmp_path), validation_images=images)
        evaluate_at(watch, FakeState(), RecordingLogger(), 50, 0.87)
        assert watch.comparisons[0].side == side, images


# A smoke run on the digits (runs/watch-ref of the README): warm-up and the LR's peak jump tens of points, then a
# smooth rise to 99 %.
DIGITS_REFERENCE = (0.469, 0.400, 0.906, 0.822, 0.958, 0.967, 0.983, 0.989, 0.992, 0.992)


def test_the_band_is_sized_on_the_part_of_the_reference_the_watch_judges(tmp_path: Path) -> None:
    """Measured over the whole curve, the early jumps made the band ±11.9 points (sigma 4.2) on a run that ends
    at 99 %: a run 10 points under at the end would pass. From the grace (25 %) on, the median is the smooth
    part's: under one point, so the sampling noise of the 360 validation images sets the band."""
    fractions = [(i + 1) / 10 for i in range(10)]
    whole = ReferenceCurve(
        "digits", tuple(fractions), DIGITS_REFERENCE, 10.0, noise_sigma(fractions, list(DIGITS_REFERENCE)),
        noise_series=(neighbour_noise(fractions, list(DIGITS_REFERENCE)),),
    )  # fmt: skip
    assert whole.noise == pytest.approx(0.042, abs=0.001)
    judged = whole.judged_from(0.25)
    assert judged.noise < 0.01 and judged.noise_from == 0.25
    assert 100 * judged.band(0.99, 360) < 2.0 < 100 * whole.band(0.99, 360) / 5
    assert "from 25 % of its schedule on" in judged.describe_band(360)
    # Fewer than three judged evaluations to measure it on: the whole curve's noise stands.
    assert whole.judged_from(0.85) == whole
    # The watch train.py builds: judged from its grace.
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"phase": "eval", "step": 10 * (i + 1), "epoch": i + 1, "val/acc1": value}) + "\n"
            for i, value in enumerate(DIGITS_REFERENCE)
        )
    )
    config = load_run_recipe("smoke", [f"watch.reference={tmp_path / 'ref'}", "watch.grace=3ep"])
    [watch] = build_curve_watch(config, read_watch_reference(config), tmp_path, str(tmp_path), 10)
    assert watch.curve.noise_from == pytest.approx(0.3) and watch.curve.noise < 0.01


def test_watch_band_replaces_the_derived_band(tmp_path: Path) -> None:
    assert watch_for(88, tmp_path, band=1.5).curve.band(0.5, 360) == pytest.approx(0.015)
    assert watch_for(88, tmp_path).curve.band(0.5, 50_000) > 0.03  # FFCV's own noise: several points


# ---- findings and the stop ----


def flat_reference(value: float = 0.8, band: float = 0.02) -> ReferenceCurve:
    fractions = tuple((i + 1) / 10 for i in range(10))
    return ReferenceCurve("flat", fractions, (value,) * 10, 10.0, noise=None, fixed_band=band)


def test_two_evaluations_in_a_row_under_the_band_are_one_finding(tmp_path: Path) -> None:
    """Under once, back inside, under twice (the finding), under again (not repeated); logged each time."""
    watch = CurveWatch(flat_reference(), 100, tmp_path, str(tmp_path))
    state, logger = FakeState(), RecordingLogger()
    for step, acc1 in [(10, 0.70), (20, 0.79), (30, 0.70), (40, 0.70), (50, 0.70)]:
        evaluate_at(watch, state, logger, step, acc1)
    findings = read_findings(tmp_path)
    assert [(finding.code, finding.step) for finding in findings] == [("below_reference_curve", 40)]
    assert "70.0 % against 80.0 ± 2.0 %" in findings[0].message and findings[0].source == "curve_watch"
    assert [line[OUTSIDE_BAND] for line in logger.logged] == [-1, 0, -1, -2, -3]
    assert logger.logged[0][BAND] == 0.02 and not state.stopped


def test_a_run_over_the_band_twice_is_told_to_check_it_measures_alike(tmp_path: Path) -> None:
    watch = CurveWatch(flat_reference(), 100, tmp_path, str(tmp_path))
    state, logger = FakeState(), RecordingLogger()
    for step, acc1 in [(30, 0.9), (40, 0.9)]:
        evaluate_at(watch, state, logger, step, acc1)
    [finding] = read_findings(tmp_path)
    assert finding.code == "above_reference_curve" and "validation set" in finding.message


def test_nothing_is_judged_during_the_grace(tmp_path: Path) -> None:
    """Under the band and past stop_below at every evaluation before 25 % of the schedule: reported, not judged."""
    watch = CurveWatch(flat_reference(), 100, tmp_path, str(tmp_path), grace_steps=25, stop_below=10)
    state, logger = FakeState(), RecordingLogger()
    for step in (10, 20):
        evaluate_at(watch, state, logger, step, 0.1)
    assert read_findings(tmp_path) == [] and not state.stopped
    evaluate_at(watch, state, logger, 30, 0.1)
    evaluate_at(watch, state, logger, 40, 0.1)
    assert [finding.code for finding in read_findings(tmp_path)] == [
        "below_reference_curve",
        "stopped_below_reference_curve",
    ]
    assert state.stopped


def test_the_run_of_evaluations_outside_survives_a_resume(tmp_path: Path) -> None:
    watch = CurveWatch(flat_reference(), 100, tmp_path, str(tmp_path), stop_below=5)
    state, logger = FakeState(), RecordingLogger()
    evaluate_at(watch, state, logger, 30, 0.6)
    resumed = CurveWatch(flat_reference(), 100, tmp_path, str(tmp_path), stop_below=5)
    resumed.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    evaluate_at(resumed, state, logger, 40, 0.6)
    assert state.stopped and [comparison.step for comparison in resumed.comparisons] == [30, 40]


def write_reference_run(
    folder: Path, values: list[float], *, max_duration: str, steps_per_eval: int = 2
) -> Path:
    """A finished run's folder as train.py writes it: eval lines in metrics.jsonl (a training line and a repeated
    step, as after a resume, among them) and the recipe.yaml with its max_duration."""
    folder.mkdir(parents=True)
    lines = [{"phase": "train", "step": 1, "epoch": 0, "train/loss": 2.3}]
    for index, value in enumerate(values):
        step = steps_per_eval * (index + 1)
        lines.append({"phase": "eval", "step": step, "epoch": 0, "val/acc1": value, "val/acc5": 1.0})
    # Logged before a preemption, then again by the resumed run: the later line counts.
    lines.insert(1, {"phase": "eval", "step": steps_per_eval, "epoch": 0, "val/acc1": 0.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "recipe.yaml").write_text(f"max_duration: {max_duration}\nglobal_batch_size: 4\n")
    return folder


def test_stop_below_saves_a_checkpoint_exits_4_and_resumes_when_lifted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 4-class synthetic run at chance against a reference at 97-100 %: judged from step 2 (25 %), 10 points under
    at steps 2 and 4, so it stops at 4 with a checkpoint there (saves are otherwise every 100 steps), exit status 4;
    relaunched with watch.stop_below=null it resumes from that checkpoint and finishes."""
    reference = write_reference_run(tmp_path / "reference", [0.97, 0.99, 0.98, 1.0], max_duration="8ba")
    folder = tmp_path / "run"
    arguments = [
        "smoke", f"save_folder={folder}", "run_name=watched", "autoresume=true", "max_duration=8ba",
        "eval_interval=2ba", "save_interval=100ba", "global_batch_size=4", "eval_batch_size=8",
        "data.num_workers=0", "logging.progress_bar=false", "model.name=resnet18", "data.source=synthetic",
        "data.num_classes=4", "data.synthetic_train_samples=32", "data.synthetic_val_samples=8",
        f"watch.reference={reference}",
    ]  # fmt: skip
    assert train.main([*arguments, "watch.stop_below=10"]) == WATCH_STOPPED_EXIT_STATUS
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 4
    assert (folder / "latest-rank0.pt").resolve().name == "ep0-ba4-rank0.pt"
    codes = [finding.code for finding in read_findings(folder) if finding.source == "curve_watch"]
    assert codes == ["below_reference_curve", "stopped_below_reference_curve"]
    watch_lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in watch_lines if REFERENCE_ACC1 in line] == [2, 4]
    assert (folder / CURVE_WATCH_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "curve watch: at 50 % of the schedule: val top-1" in out
    assert "stopped by the curve watch" in out and "ep0-ba4-rank0.pt" in out and "exit status 4" in out

    assert train.main([*arguments, "watch.stop_below=null"]) == 0
    assert json.loads((folder / "summary.json").read_text())["steps"] == 8


# ---- a finished run as the reference ----


def test_a_finished_runs_metrics_file_is_a_reference_by_fraction_of_its_steps(tmp_path: Path) -> None:
    folder = write_reference_run(tmp_path / "run", [0.2, 0.5, 0.6, 0.8, 0.9], max_duration="10ba")
    [curve] = read_reference(str(folder)).curves
    assert curve.fractions == (0.2, 0.4, 0.6, 0.8, 1.0) and curve.values == (0.2, 0.5, 0.6, 0.8, 0.9)
    assert curve.at(0.5) == pytest.approx(0.55)
    assert read_reference(str(folder / "metrics.jsonl")).curves == (curve,)


def test_several_seeds_are_one_reference_whose_band_holds_their_spread(tmp_path: Path) -> None:
    """Three smooth runs of one recipe, each a constant 4 points from the next: one run alone shows no noise (its
    points lie on a line), the three show the spread a new seed can fall anywhere in: mean curve, sigma 4 points."""
    shape = [0.2, 0.4, 0.6, 0.8, 0.9]
    runs = [
        write_reference_run(
            tmp_path / f"seed{seed}", [value + offset for value in shape], max_duration="10ba"
        )
        for seed, offset in enumerate((-0.04, 0.0, 0.04))
    ]
    [alone] = read_reference(str(runs[1])).curves
    [seeds] = read_reference(",".join(str(run) for run in runs)).curves
    assert seeds.fractions == alone.fractions and seeds.values == pytest.approx(shape)
    assert alone.noise == pytest.approx(0.0, abs=1e-9) and seeds.noise == pytest.approx(0.04)
    assert seeds.band(0.6) == pytest.approx(2 * math.sqrt(2) * 0.04)
    with pytest.raises(UsageError, match="need at least two"):
        read_reference(f"{runs[0]},")


def test_the_shared_trained_run_is_a_reference_as_written(trained_run: dict[str, Any]) -> None:
    """The smoke run's own files (two evaluations, at 5 and 10 of 10 steps): its values at 50 % and 100 %."""
    folder = trained_run["folder"]
    evaluations = [
        json.loads(line)
        for line in (folder / "metrics.jsonl").read_text().splitlines()
        if '"val/acc1"' in line
    ]
    [curve] = read_reference(str(folder), band_points=3).curves
    assert curve.fractions == (0.5, 1.0) and list(curve.values) == [line["val/acc1"] for line in evaluations]
    with pytest.raises(UsageError, match="at least 3"):
        read_reference(str(folder))  # two evaluations: no noise to measure, so the band must be given


# ---- bad references, refused before training ----


BAD_REFERENCE_FILES = {
    "not JSON": ("{'runs': [", "is not a JSON reference file"),
    "no runs": ('{"metric": "val/acc1"}', "has no 'runs' list"),
    "another metric": (
        '{"metric": "top_5", "runs": [{"arch": "resnet50", "epochs": 2, "top1": [0.1, 0.2]}]}',
        "holds metric 'top_5', not val/acc1",
    ),
    "a value per epoch missing": (
        '{"metric": "val/acc1", "runs": [{"arch": "resnet50", "epochs": 3, "top1": [0.1, 0.2]}]}',
        "has 2 top1 values for 3 epochs",
    ),
    "percent, not fractions": (
        '{"metric": "val/acc1", "runs": [{"arch": "resnet50", "epochs": 3, "top1": [10, 20, 30]}]}',
        "from 0 to 1",
    ),
}


@pytest.mark.parametrize("case", BAD_REFERENCE_FILES, ids=list(BAD_REFERENCE_FILES))
def test_a_malformed_reference_file_is_refused_with_its_name(tmp_path: Path, case: str) -> None:
    text, message = BAD_REFERENCE_FILES[case]
    path = tmp_path / "curves.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        read_reference(str(path))
    assert str(path) in str(error.value)


def test_a_run_that_did_not_finish_or_logged_no_top1_is_refused(tmp_path: Path) -> None:
    stopped = write_reference_run(tmp_path / "stopped", [0.2, 0.5, 0.6], max_duration="10ba")
    with pytest.raises(UsageError, match="at step 6 of 10"):
        read_reference(str(stopped))
    pretraining = tmp_path / "pretraining"
    pretraining.mkdir()
    (pretraining / "metrics.jsonl").write_text('{"phase": "eval", "step": 5, "epoch": 1, "knn/acc1": 0.4}\n')
    with pytest.raises(UsageError, match=r"no val/acc1 evaluations \(it logs knn/acc1"):
        read_reference(str(pretraining))
    with pytest.raises(UsageError, match=r"has no metrics\.jsonl"):
        read_reference(str(tmp_path))


def test_a_missing_reference_stops_train_py_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    status = train.main(["smoke", f"save_folder={folder}", "watch.reference=runs/never-trained"])
    assert status == 2 and not folder.exists()
    error = capsys.readouterr().err
    assert "watch.reference 'runs/never-trained' not found" in error and "ffcv_rn50" in error
