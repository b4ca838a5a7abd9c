"""The run planner: batch, steps, LR, memory, time and cost for every recipe, without data or training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

import train
from model import build_moco_model
from recipes.errors import UsageError
from recipes.loading import available_recipes
from recipes.schema import MocoConfig, ModelConfig
from tools import estimates, planning
from tools.estimates import LoaderMeasurement
from tools.measurements import measure_network
from tools.planning import lr_at, plan_run, published_size
from training.hardware import GPU_TYPES, INSTANCES, MULTI_GPU_EFFICIENCY, parse_hardware
from training.optimization import build_optimizer, build_scheduler
from training.preflight import load_run_recipe

MEASURE_SECONDS = 0.1
# (world size, per-device batch, training images, steps per epoch, total steps), worked out by hand:
# ImageNet-1k's 1,281,167 images over 4 processes are 320,291 each (drop_last), 1,251 batches of 256, x 90
# epochs; the digits split keeps 1,437 of 1,797 scans for training, 44 batches of 32.
EXPECTED = {
    "smoke": (1, 32, 1_437, 44, 440),
    "colab": (1, 128, 10_000, 78, 390),
    "g4dn_xlarge": (1, 256, 25_000, 97, 3_880),
    "troubleshoot_subset": (1, 256, 50_000, 195, 5_850),
    "g4dn_12xlarge": (4, 256, 1_281_167, 1_251, 112_590),
    # Tiny ImageNet's published 100,000 training images (data.tiny_imagenet), 390 full batches of 256.
    "tiny_imagenet": (1, 256, 100_000, 390, 35_100),
}
# Peak LR (base_lr x global batch / 256) and warmup steps of each recipe.
EXPECTED_LR = {
    "smoke": (0.001, 44),
    "colab": (0.128, 78),
    "g4dn_xlarge": (0.256, 291),
    "troubleshoot_subset": (0.1, 975),
    "g4dn_12xlarge": (1.024, 10_008),
    "tiny_imagenet": (0.256, 1_170),
}


def recipe(name: str, tmp_path: Path, digits_cache: Path, *overrides: str) -> DictConfig:
    """The recipe, with a folder data path pointing nowhere: the plan never depends on this machine's data."""
    config = load_run_recipe(name, [f"data.cache_dir={digits_cache}", *overrides])
    if config.data.source in ("imagefolder", "ilsvrc", "tiny_imagenet"):
        config.data.path = str(tmp_path / "absent")
    return config


@pytest.mark.parametrize("name", available_recipes())
def test_plan_of_every_recipe(name: str, tmp_path: Path, digits_cache: Path) -> None:
    config = recipe(name, tmp_path, digits_cache)
    plan = plan_run(config, f"recipes/{name}.yaml", measure_seconds=MEASURE_SECONDS)
    report = plan.report()
    if config.max_duration.endswith("ep"):
        assert plan.total_steps == plan.batches_per_epoch * int(config.max_duration.removesuffix("ep"))
    assert f"{plan.batches_per_epoch:,} per epoch, {plan.total_steps:,} total" in report
    assert plan.findings == [] and "recipe checks  no findings" in report
    # The decay applied at the recipe's batch: Mosaic's 5e-4 per step at 2048 is 6.25e-5 at 256.
    if name == "g4dn_xlarge":
        assert "weight decay   6.25e-05 = 0.0005 tuned at batch 2048 x 0.125" in report
    assert plan.time.total_hours > 0 and plan.memory.total_gib > plan.memory.model_state_gib
    assert plan.time.bottleneck in report
    json.dumps(plan.to_json())
    if name not in EXPECTED:
        return
    world, per_device, images, per_epoch, total = EXPECTED[name]
    assert (plan.hardware.world_size, plan.per_device_batch_size) == (world, per_device)
    assert (plan.data.train_images, plan.batches_per_epoch, plan.total_steps) == (images, per_epoch, total)
    assert f"world size {world} x per-device batch {per_device}" in report
    assert f"{per_epoch:,} per epoch, {total:,} total" in report
    assert plan.data.exact
    assert ("counted from data.source=digits" if name == "smoke" else "published size") in plan.data.origin


@pytest.mark.parametrize("name", sorted(EXPECTED_LR))
def test_learning_rates_follow_the_recipe_schedule(name: str, tmp_path: Path, digits_cache: Path) -> None:
    config = recipe(name, tmp_path, digits_cache)
    _, _, _, per_epoch, total = EXPECTED[name]
    points, rule = planning.learning_rate_points(config, per_epoch, total)
    by_label = {point.label: point for point in points}
    peak_lr, warmup = EXPECTED_LR[name]
    assert by_label["start"].lr == 0
    assert (by_label["end of warmup"].step, by_label["end of warmup"].lr) == (warmup, pytest.approx(peak_lr))
    assert by_label["peak"].lr == pytest.approx(peak_lr)
    assert by_label["end"].step == total - 1 and by_label["end"].lr < 1e-3 * peak_lr
    # Half-way through the cosine decay the LR is half the peak: (1 + cos(pi / 2)) / 2.
    optimizer, _ = build_optimizer(torch.nn.Linear(1, 1), config.optimizer, config.global_batch_size)
    scheduler = build_scheduler(
        config.scheduler, optimizer, config.max_duration, per_epoch, config.global_batch_size
    )
    halfway = warmup + (total - warmup) // 2
    halfway_lr = lr_at(scheduler, peak_lr, halfway, config, per_epoch)
    assert halfway_lr == pytest.approx(
        peak_lr * (1 + math.cos(math.pi * (halfway - warmup) / (total - warmup))) / 2
    )
    assert f"{peak_lr:g}" in rule


def test_one_cycle_learning_rates(digits_cache: Path) -> None:
    config = load_run_recipe("smoke", [f"data.cache_dir={digits_cache}", "scheduler.name=one_cycle"])
    points = {point.label: point.lr for point in planning.learning_rate_points(config, 44, 440)[0]}
    start = 0.001 / config.scheduler.div_factor
    assert points["start"] == pytest.approx(start)
    assert points["peak"] == pytest.approx(0.001, rel=1e-3)
    assert points["end"] == pytest.approx(start / config.scheduler.final_div_factor)


def test_plan_without_data_uses_published_sizes_and_says_which(tmp_path: Path) -> None:
    absent = f"data.path={tmp_path / 'absent'}"
    exact = published_size(load_run_recipe("g4dn_xlarge", [absent]))
    assert (exact.train_images, exact.val_images, exact.num_classes, exact.exact) == (
        25_000,
        5_000,
        100,
        True,
    )
    assert "not reachable" in exact.origin and "1,281,167" in (exact.source or "")
    estimated = published_size(
        load_run_recipe("troubleshoot_subset", [absent, "data.max_samples_per_class=null"])
    )
    assert (estimated.train_images, estimated.exact) == (128_117, False)  # 100 classes x the mean 1,281.167
    tiny = published_size(load_run_recipe("troubleshoot_subset", [absent, "data.subset_size=tiny"]))
    assert (tiny.train_images, tiny.exact) == (1_000, True)
    with pytest.raises(UsageError, match="no published size"):
        published_size(load_run_recipe("colab", ["data.path=someone/other-dataset"]))


def test_activation_measurement_matches_resnet50_at_224() -> None:
    # ResNet-50 holds ~86 MB per 224 px image at its training forward's peak in fp32, nearly all of it saved
    # for backward (measured directly at 224 px on this CPU).
    network = measure_network("resnet50", "fc", False, 1000)
    assert 70e6 < network.activation_bytes_at(224) < 95e6
    assert network.parameters == 25_557_032


def test_memory_fits_as_published_practice_says(tmp_path: Path, digits_cache: Path) -> None:
    # NVIDIA trains ResNet-50 at 224 px with 256 images per 16 GB GPU in AMP and 128 in fp32.
    hardware = parse_hardware("1xT4")
    network = measure_network("resnet50", "fc", False, 1000)
    at_224 = ["data.train_resolution=224", "device_train_microbatch_size=null"]
    amp = estimates.estimate_memory(
        recipe("troubleshoot_subset", tmp_path, digits_cache, *at_224), hardware, 256, network
    )
    fp32 = estimates.estimate_memory(
        recipe("troubleshoot_subset", tmp_path, digits_cache, *at_224, "precision=fp32"),
        hardware,
        256,
        network,
    )
    assert amp.fits and not fp32.fits
    assert 128 <= fp32.largest_fitting_microbatch < 256
    assert amp.total_gib == pytest.approx(amp.activations_gib + amp.model_state_gib + amp.allowance_gib)
    assert fp32.activations_gib == pytest.approx(2 * amp.activations_gib)
    assert "DOES NOT FIT" in estimates.describe_memory(fp32, hardware)


# A loader far faster than any GPU, so the plans compared below are bound by compute alone.
FAST_LOADER = LoaderMeasurement(224, 1e-6, 224, 1e-6, 1e-6, "fixed, far faster than the GPUs")


def as_task_and_supervised(
    name: str, tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str
) -> tuple[planning.RunPlan, planning.RunPlan]:
    """The recipe's plan, and the same recipe planned as a supervised run: same hardware, data and loader."""
    monkeypatch.setattr(estimates, "measure_loader", lambda *arguments: FAST_LOADER)
    plans = [
        plan_run(
            recipe(name, tmp_path, digits_cache, *overrides, *task), name, measure_seconds=MEASURE_SECONDS
        )
        for task in ((), ("task=supervised", "model.backbone_checkpoint=null"))
    ]
    return plans[0], plans[1]


def test_moco_plan_holds_two_views_and_a_momentum_encoder_without_gradients(
    tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moco, supervised = as_task_and_supervised("moco_v3_imagenet", tmp_path, digits_cache, monkeypatch)
    # Both views' saved tensors are exactly twice one view's; the momentum encoder adds only its no_grad
    # working set (about an eighth of one view's saved tensors, at any resolution) and the MLPs a few hundred
    # KB: 2.0-2.3. Were the momentum encoder's tensors saved too, it would be about 4; with one view, about 1.
    ratio = moco.memory.activation_mb_per_image / supervised.memory.activation_mb_per_image
    assert 1.95 < ratio < 2.3, ratio
    assert (moco.memory.microbatch, moco.memory.resolution) == (supervised.memory.microbatch, 224)
    assert "128 images of 2 views at 224 px" in moco.report()
    # Weights for every parameter; gradients, LARS momentum and autocast's fp16 copies for the trained ones.
    model = build_moco_model(ModelConfig(name="resnet50"), MocoConfig(), device="cpu")
    trained = sum(p.numel() for part in (model.base_encoder, model.predictor) for p in part.parameters())
    momentum_encoder = sum(p.numel() for p in model.momentum_encoder.parameters())
    parts = moco.memory.parts
    assert parts["momentum encoder weights"] == pytest.approx(4 * momentum_encoder / estimates.GIB)
    assert (
        parts["trained weights"]
        == parts["gradients"]
        == parts["optimizer"]
        == pytest.approx(4 * trained / estimates.GIB)
    )
    assert parts["fp16 weights"] == pytest.approx(2 * trained / estimates.GIB)
    assert "momentum encoder weights" in moco.report()


@pytest.mark.parametrize(
    ("name", "task_name", "forward_passes"),
    [
        ("moco_v3_imagenet", "moco_v3", 8),
        ("moco_v3_smoke", "moco_v3", 8),
        ("linear_probe", "linear_probe", 1),
    ],
)
def test_train_time_counts_the_task_passes_per_image(
    name: str,
    task_name: str,
    forward_passes: int,
    tmp_path: Path,
    digits_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MoCo v3 takes both views forward and backward through the base encoder and forward through the momentum
    encoder (2 x 3 + 2 x 1 = 8 forward passes, a supervised step is 3), the probe one forward pass of its
    frozen backbone: on the GPU figures and on the CPU's measured supervised step alike (fixed here, as two
    measurements on a busy machine differ)."""
    monkeypatch.setattr(estimates, "cpu_training_images_per_second", lambda *arguments: 20.0)
    task, supervised = as_task_and_supervised(name, tmp_path, digits_cache, monkeypatch)
    assert task.time.data_bound_fraction == supervised.time.data_bound_fraction == 0
    assert task.time.train_hours / supervised.time.train_hours == pytest.approx(forward_passes / 3)
    # The rule matches the real steps: torch's FLOP count of their convolutions against a supervised step's.
    dims = (4096, 4096, 256) if task_name == "moco_v3" else None
    measured = measure_network("resnet50", "fc", False, 1000, task_name, dims).convolution_flops
    one_step = measure_network("resnet50", "fc", False, 1000).convolution_flops
    assert measured / one_step == pytest.approx(forward_passes / 3, rel=0.02)
    if name == "linear_probe":
        # The frozen backbone saves nothing for backward: what it holds is its forward's working set, a few
        # feature maps at a time (an eighth of a training forward's saved tensors).
        assert task.memory.activation_mb_per_image < 0.2 * supervised.memory.activation_mb_per_image
        assert task.memory.parts["trained weights"] < 0.1 * task.memory.parts["frozen backbone weights"]


def test_knn_monitor_passes_are_the_only_evaluation_of_moco(
    tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(estimates, "measure_loader", lambda *arguments: FAST_LOADER)
    hardware = parse_hardware("4xT4 (g4dn.12xlarge)")
    forward = 4 * GPU_TYPES["T4"].amp_images_per_second * MULTI_GPU_EFFICIENCY * 3  # images/s, one forward

    def monitor(*overrides: str) -> estimates.TimeEstimate:
        config = recipe("moco_v3_imagenet", tmp_path, digits_cache, *overrides)
        return estimates.estimate_time(
            config, hardware, train_images=1_281_167, val_images=50_000, num_classes=1000, batches=2_502,
            total=250_200, datasets=None, seconds=MEASURE_SECONDS, assumptions=[],
        )  # fmt: skip

    # At step 0, then every 5 of the 100 epochs: 21 passes over the 50,000-image bank and 50,000 validation
    # images, at the forward-pass rate; eval_interval (1ep in the recipe's base) runs nothing.
    every_5 = monitor()
    assert (every_5.evaluation_label, every_5.evaluations, every_5.evaluation_images) == (
        "k-NN monitor",
        21,
        100_000,
    )
    assert every_5.eval_hours == pytest.approx(21 * 100_000 / forward / 3600)
    # 100 epochs are not a multiple of 7: the end of training adds one (1 + 14 + 1); a bank larger than the
    # training set is the training set.
    every_7 = monitor("moco.knn_interval=7ep", "moco.knn_train_images=2000000")
    assert (every_7.evaluations, every_7.evaluation_images) == (16, 1_281_167 + 50_000)
    off = monitor("moco.knn_interval=null")
    assert (off.evaluations, off.eval_hours) == (0, 0)
    assert off.train_hours == every_5.train_hours


@pytest.mark.parametrize(("seconds_per_image", "bottleneck"), [(1e-3, "compute"), (1e-2, "data loading")])
def test_time_and_cost_from_the_slower_of_gpu_and_loader(
    seconds_per_image: float,
    bottleneck: str,
    tmp_path: Path,
    digits_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fixed = LoaderMeasurement(176, seconds_per_image, 176, seconds_per_image, seconds_per_image, "fixed")
    monkeypatch.setattr(estimates, "measure_loader", lambda *arguments: fixed)
    plan = plan_run(recipe("troubleshoot_subset", tmp_path, digits_cache), "troubleshoot_subset")
    cores = 4  # data.num_workers=4 on g4dn.xlarge's 4 vCPUs
    gpu = GPU_TYPES["T4"].amp_images_per_second * (224 / 176) ** 2
    loader = cores / seconds_per_image
    assert plan.time.train_hours == pytest.approx(5_850 * 256 / min(gpu, loader) / 3600)
    evaluations = 30  # one per epoch; the last is at the end of training
    eval_rate = min(GPU_TYPES["T4"].amp_images_per_second * 3, loader)
    assert plan.time.eval_hours == pytest.approx(evaluations * 5_000 / eval_rate / 3600)
    assert plan.time.bottleneck == bottleneck
    assert plan.time.cost_usd == pytest.approx(plan.time.total_hours * INSTANCES["g4dn.xlarge"].usd_per_hour)
    assert "assumed g4dn.xlarge" in plan.report()
    low, high = plan.time.expected_hours  # NVIDIA's measured end-to-end runs: 1.05x to 1.56x
    assert 1.0 < low / plan.time.total_hours < 1.1 and 1.5 < high / plan.time.total_hours < 1.6
    assert f"expect {planning.expected_time(plan.time)}" in plan.report()


def test_data_side_progressive_resizing_shrinks_early_epochs(tmp_path: Path, digits_cache: Path) -> None:
    config = recipe("g4dn_12xlarge", tmp_path, digits_cache)
    segments = estimates.resolution_schedule(config, 1_251, 112_590)
    assert len(segments) == 90 and sum(steps for steps, _, _ in segments) == 112_590
    assert segments[0][1:] == (88, 88) and segments[-1][1:] == (176, 176)
    assert [side for _, side, _ in segments] == sorted(side for _, side, _ in segments)


def test_hardware_strings() -> None:
    multi = parse_hardware("4xT4 (g4dn.12xlarge)")
    assert (multi.world_size, multi.instance.name, multi.vcpus, multi.notes) == (4, "g4dn.12xlarge", 48, ())
    colab = parse_hardware("1xT4 (Colab)")
    assert (colab.instance.name, colab.instance.usd_per_hour, colab.vcpus) == ("Colab", 0.0, 2)
    assert parse_hardware("1xT4").instance.name == "g4dn.xlarge"
    cpu = parse_hardware("cpu (2 cores)")
    assert (cpu.device, cpu.world_size, cpu.vcpus, cpu.gpu) == ("cpu", 1, 2, None)
    assert parse_hardware("2xTPU") is None and parse_hardware("a big machine") is None


def test_unknown_hardware_is_a_usage_error_naming_the_forms(digits_cache: Path) -> None:
    with pytest.raises(UsageError, match=r"cpu \(N cores\)"):
        plan_run(load_run_recipe("smoke", [f"data.cache_dir={digits_cache}", "hardware=2xTPU"]), "smoke")


def test_plan_flag_prints_and_does_not_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(planning, "DEFAULT_MEASURE_SECONDS", MEASURE_SECONDS)
    monkeypatch.chdir(tmp_path)
    assert train.main(["g4dn_12xlarge", f"data.path={tmp_path / 'absent'}", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "world size 4 x per-device batch 256" in out and "1,251 per epoch, 112,590 total" in out
    assert "$3.912/h" in out
    assert not (tmp_path / "runs").exists()


TIME_RANGE = re.compile(r"(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) (h|min)\b")
COST_RANGE = re.compile(r"\$(\d[\d,]*\.\d\d)-(\d[\d,]*\.\d\d)")
REPOSITORY = Path(__file__).resolve().parent.parent


def quoted_ranges(text: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Every "A-B h|min" range (in hours) and "$C-D" range in ``text``."""
    times = [
        (float(low) / (60 if unit == "min" else 1), float(high) / (60 if unit == "min" else 1))
        for low, high, unit in TIME_RANGE.findall(text)
    ]
    costs = [
        (float(low.replace(",", "")), float(high.replace(",", ""))) for low, high in COST_RANGE.findall(text)
    ]
    return times, costs


@pytest.mark.parametrize(
    "name",
    [
        *("colab", "g4dn_xlarge", "g4dn_12xlarge", "troubleshoot_subset", "moco_v3_imagenet", "linear_probe"),
        *("rsb_a3", "torchvision_v2", "ffcv_rn50_88ep"),
    ],
)
def test_readme_and_recipe_header_quote_the_plan(
    name: str, tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One source for time and cost: the phase table and the recipe's header say what --plan says (within 15 %),
    with the data loader's pace that the README states (1.3 ms per image per core, an idle 2-core machine) in
    place of this machine's measurement, which a loaded test machine would make slower."""
    idle = LoaderMeasurement(176, 1.3e-3, 176, 1.3e-3, 1.3e-3, "an idle 2-core machine")
    monkeypatch.setattr(estimates, "measure_loader", lambda *arguments: idle)
    plan = plan_run(
        recipe(name, tmp_path, digits_cache), f"recipes/{name}.yaml", measure_seconds=MEASURE_SECONDS
    )
    expected_time = plan.time.expected_hours
    expected_cost = plan.time.expected_cost_usd
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8").splitlines()
    row = next(line for line in readme if f"`recipes/{name}.yaml`" in line)
    header = "\n".join(
        line
        for line in (REPOSITORY / "recipes" / f"{name}.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    for where, text in (("README.md's phase table", row), (f"recipes/{name}.yaml's header", header)):
        times, costs = quoted_ranges(text)
        assert any(time == pytest.approx(expected_time, rel=0.15) for time in times), (
            where,
            times,
            expected_time,
        )
        if expected_cost is not None and plan.time.usd_per_hour:
            assert any(cost == pytest.approx(expected_cost, rel=0.15) for cost in costs), (where, costs)


def test_a_derived_gpu_figure_is_planned_as_the_range_of_its_two_derivations(
    tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The T4's training figure is derived from its inference figure two ways (NVIDIA's V100 training/inference
    ratio, and Lambda's measured V100 training over NVIDIA's V100 inference); the plan shows the time at both. A
    measured figure (V100) has one."""
    t4 = GPU_TYPES["T4"]
    assert t4.amp_images_per_second == round(1198 * 1200 / 3382)  # NVIDIA's README, both ratios' terms
    assert t4.alternative.amp_images_per_second == round(1198 * 833 / 3382)  # Lambda's V100 16GB fp16: 833
    monkeypatch.setattr(estimates, "measure_loader", lambda *arguments: FAST_LOADER)
    plan = plan_run(
        recipe("g4dn_xlarge", tmp_path, digits_cache), "g4dn_xlarge", measure_seconds=MEASURE_SECONDS
    )
    other = plan.time.alternative
    ratio = t4.amp_images_per_second / t4.alternative.amp_images_per_second
    # Bound by compute alone (the loader is far faster), the whole run takes longer by the figures' ratio.
    assert other.total_hours == pytest.approx(plan.time.total_hours * ratio)
    report = plan.report()
    assert f"{other.compute_images_per_second:,.0f} img/s at the other derivation" in report
    assert "LambdaCloud V100 16GB" in report and "plan for the range" in report
    v100 = plan_run(
        recipe("g4dn_xlarge", tmp_path, digits_cache, "hardware=1xV100 (p3.2xlarge)"),
        "g4dn_xlarge",
        measure_seconds=MEASURE_SECONDS,
    )
    assert v100.time.alternative is None and "other derivation" not in v100.report()


def test_plan_states_the_resolution_schedule_and_the_loader_extrapolation(
    tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """g4dn_12xlarge resizes 88 -> 176 px: compute at 88 px is four times that at 176 px, the run's average lies
    between; its 40 loader cores are one measured core's pace x 40, and the report says so."""
    fixed = LoaderMeasurement(88, 1e-3, 176, 2e-3, 1e-3, "fixed")
    monkeypatch.setattr(estimates, "measure_loader", lambda *arguments: fixed)
    plan = plan_run(
        recipe("g4dn_12xlarge", tmp_path, digits_cache), "g4dn_12xlarge", measure_seconds=MEASURE_SECONDS
    )
    time = plan.time
    assert time.smallest_side == 88
    assert time.compute_at_smallest_side == pytest.approx(4 * time.compute_images_per_second)
    assert time.compute_images_per_second < time.average_images_per_second < time.compute_at_smallest_side
    assert time.average_images_per_second == pytest.approx(112_590 * 1024 / (time.train_hours * 3600))
    # 2 ms per image per core at 176 px: the compute needs its rate x 2 ms cores.
    assert time.loader_cores_needed == pytest.approx(time.compute_images_per_second * 2e-3)
    report = plan.report()
    assert "the network sees 88 px at first" in report
    assert "x 40 worker core(s), extrapolated linearly from 1 core measured" in report
    assert f"the compute would need {time.loader_cores_needed:,.1f} cores" in report


def test_a_subset_is_labelled_by_the_keys_that_cut_it(tmp_path: Path) -> None:
    absent = f"data.path={tmp_path / 'absent'}"
    colab = published_size(load_run_recipe("colab", []))
    assert colab.train_images == 10_000
    assert colab.origin.startswith(
        "a subset by data.subset_size=small, data.val_subset_size=5000 of ImageNet-1k's published size"
    )
    classes = published_size(load_run_recipe("g4dn_xlarge", [absent]))
    assert "data.max_classes=100, data.max_samples_per_class=250 of" in classes.origin
    assert "val_subset_size" not in classes.origin  # 100 classes x 50 is what max_classes leaves
    whole = published_size(load_run_recipe("g4dn_12xlarge", [absent]))
    assert whole.origin.startswith("ImageNet-1k's published size (1,281,167 / 50,000)")


def test_plan_uses_a_finished_runs_measured_throughput(
    trained_run: dict[str, Any], digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given (--calibrate-from) or found in the save folder of the recipe's run_name, a finished run of the
    same recipe on the same hardware sets the training time: the run's images at its measured images/s."""
    monkeypatch.setattr(estimates, "measure_loader", lambda *arguments: FAST_LOADER)
    monkeypatch.setattr(estimates, "cpu_training_images_per_second", lambda *arguments: 20.0)
    folder, summary = trained_run["folder"], trained_run["summary"]
    measured = summary["throughput/samples_per_sec"]
    given = plan_run(
        load_run_recipe("smoke", [f"data.cache_dir={digits_cache}"]),
        "recipes/smoke.yaml",
        measure_seconds=MEASURE_SECONDS,
        calibrate_from=folder,
    )
    assert given.time.train_hours == pytest.approx(440 * 32 / measured / 3600, rel=1e-6)
    assert f"{folder / 'summary.json'} (--calibrate-from)" in given.report()
    found = plan_run(
        load_run_recipe(
            "smoke", [f"data.cache_dir={digits_cache}", f"save_folder={folder}", "run_name=trained"]
        ),
        "recipes/smoke.yaml",
        measure_seconds=MEASURE_SECONDS,
    )
    assert found.time.train_hours == given.time.train_hours
    assert "(found in the save folder of run_name=trained)" in found.report()


def test_calibrating_from_a_run_that_does_not_fit_is_a_usage_error(
    trained_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = trained_run["folder"]
    other = load_run_recipe("g4dn_xlarge", [f"data.path={tmp_path / 'absent'}"])
    with pytest.raises(UsageError) as error:
        plan_run(other, "recipes/g4dn_xlarge.yaml", calibrate_from=folder)
    message = str(error.value)
    assert str(folder / "summary.json") in message
    assert "recipe smoke.yaml, not g4dn_xlarge.yaml" in message and "hardware 'cpu (2 cores)'" in message
    assert "plan without --calibrate-from" in message
    # A folder without a summary (no finished run): exit status 2 and the file named, before any measuring.
    assert train.main(["smoke", "--plan", "--calibrate-from", str(tmp_path)]) == 2
    assert f"{tmp_path / 'summary.json'} does not exist" in capsys.readouterr().err
