"""The run planner (``train.py RECIPE --plan``): what a recipe will do on its hardware, without training.

It resolves the per-device batch from the recipe's ``hardware``, counts steps from the real data when it is
reachable here (else from the dataset's published size), evaluates the recipe's own learning-rate schedule,
estimates memory per device from a measurement of the model the recipe's task trains, and wall time and cost
from published GPU throughputs (``training.hardware``), scaled by the task's passes per image, and the data
loader throughput measured on this machine for a few seconds. Every figure says where it came from; every
assumption is listed in the report.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from composer.core import Time, Timestamp, TimeUnit
from omegaconf import DictConfig

from algorithms.registry import enabled_algorithms
from callbacks.budget_guard import format_hours
from callbacks.findings import Finding
from data.resumable_sampler import epoch_share
from model import PREACT_NAMES
from recipes.errors import UsageError
from recipes.schema import Task
from tools.estimates import (
    TRAINING_STEP_IN_FORWARD_PASSES,
    MemoryEstimate,
    TimeEstimate,
    describe_memory,
    estimate_memory,
    estimate_time,
    training_passes,
)
from tools.measurements import NetworkMeasurement, measure_network
from training.calibration import find_measured_throughput, measured_throughput
from training.hardware import END_TO_END_SOURCE, Hardware, known_forms, parse_hardware
from training.optimization import build_optimizer, build_scheduler, scale_weight_decay, warmup_steps
from training.preflight import RecipeFacts, check_recipe, run_steps_of

# Seconds of measurement on this machine per plan (data loader, and training steps for CPU recipes).
DEFAULT_MEASURE_SECONDS = 3.0


@dataclass(frozen=True)
class PublishedDataset:
    """A dataset's published size, for planning without the data at hand."""

    name: str
    train_images: int
    val_images_per_class: int
    num_classes: int
    # The smallest training class: a per-class cap at or below it gives an exact count.
    min_train_per_class: int
    source: str


IMAGENET_1K = PublishedDataset(
    "ImageNet-1k", 1_281_167, 50, 1000, 732,
    "Russakovsky et al. 2015, ImageNet Large Scale Visual Recognition Challenge, IJCV 115, Table 2 "
    "(ILSVRC2012 classification: 1,281,167 training images, 732-1300 per class; 50,000 validation, 50 per "
    "class)",
)  # fmt: skip


@dataclass(frozen=True)
class DataSize:
    """How many images and classes the run sees, and where the numbers came from."""

    train_images: int
    val_images: int
    num_classes: int
    exact: bool
    origin: str
    # The publication the sizes come from, when they are not counted from the data.
    source: str | None = None


@dataclass(frozen=True)
class LearningRatePoint:
    """The learning rate the optimizer uses at one step."""

    label: str
    step: int
    lr: float


@dataclass
class RunPlan:
    """Everything ``--plan`` reports about a recipe."""

    recipe: str
    description: str
    hardware: Hardware
    global_batch_size: int
    per_device_batch_size: int
    device_train_microbatch_size: int | str | None
    data: DataSize
    batches_per_epoch: int
    total_steps: int
    max_duration: str
    lr_rule: str
    # The weight decay applied at the recipe's batch and how (training.optimization.scale_weight_decay).
    weight_decay: str
    learning_rates: list[LearningRatePoint]
    memory: MemoryEstimate
    time: TimeEstimate
    findings: list[Finding]
    assumptions: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == "error"]

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data (figures, sources and assumptions)."""
        plan = asdict(self)
        plan["memory"]["fits"] = self.memory.fits
        plan["time"] |= {
            "total_hours": self.time.total_hours,
            "cost_usd": self.time.cost_usd,
            "expected_hours": list(self.time.expected_hours),
            "expected_cost_usd": None
            if self.time.expected_cost_usd is None
            else list(self.time.expected_cost_usd),
            "bottleneck": self.time.bottleneck,
            "alternative_expected_hours": self.time.alternative_expected_hours,
        }
        plan["world_size"] = self.hardware.world_size
        return plan

    def report(self) -> str:
        """The plan as lines a person reads before paying for a run."""
        hardware, data, memory, time = self.hardware, self.data, self.memory, self.time
        machine = [f"{hardware.world_size} process(es)"]
        if hardware.vcpus:
            machine.append(f"{hardware.vcpus} vCPUs")
        if hardware.instance:
            machine.append(f"{hardware.instance.name} at ${hardware.instance.usd_per_hour:g}/h")
        microbatch = self.device_train_microbatch_size
        epochs = self.total_steps / self.batches_per_epoch
        rates = ", ".join(
            f"{point.label} {point.lr:.4g} (step {point.step:,})" for point in self.learning_rates
        )
        lines = [
            f"Plan for {_display_path(self.recipe)}: {self.description}",
            f"  hardware       {hardware.text}: {', '.join(machine)}",
            f"  batch          global {self.global_batch_size} = world size {hardware.world_size} x "
            f"per-device batch {self.per_device_batch_size}"
            + (f", microbatch {microbatch}" if microbatch is not None else ""),
            f"  data           {data.train_images:,} training / {data.val_images:,} validation images, "
            f"{data.num_classes} classes ({'' if data.exact else 'estimated, '}{data.origin})",
            f"  steps          {self.batches_per_epoch:,} per epoch, {self.total_steps:,} total "
            f"(max_duration {self.max_duration} = {epochs:g} epochs)",
            f"  learning rate  {rates}; {self.lr_rule}",
            f"  weight decay   {self.weight_decay.removeprefix('weight decay ')}",
            f"  memory/device  {describe_memory(memory, hardware)}",
            *_throughput_lines(time),
            f"  wall time      {format_hours(time.total_hours)} (training {format_hours(time.train_hours)}, "
            f"{time.evaluation_label} {format_hours(time.eval_hours)}){_expected_line(time)}; bottleneck: "
            f"{time.bottleneck} (data loading sets the pace {100 * time.data_bound_fraction:.0f} % of "
            "training time)" + _other_wall_time(time),
            f"  cost           {_cost_line(time)}",
        ]
        if self.findings:
            lines.append("  recipe checks")
            lines += [f"    {finding.line()}" for finding in self.findings]
        else:
            lines.append("  recipe checks  no findings")
        lines.append("  assumptions")
        lines += [f"    - {assumption}" for assumption in self.assumptions]
        return "\n".join(lines)


def _display_path(path: str) -> str:
    """A path relative to the working directory when it lies inside it (``recipes/colab.yaml``)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


# Where a report line goes on: under the text after its label.
CONTINUED = " " * 17


def _throughput_lines(time: TimeEstimate) -> list[str]:
    """Compute (with its other derivation, or the measured rate in its place), the resolution schedule's range
    and average, and the data loader with its extrapolation named."""
    compute = f"compute {time.compute_images_per_second:,.0f} img/s ({time.compute_origin})"
    if time.alternative is not None:
        compute += (
            f"; {time.alternative.compute_images_per_second:,.0f} img/s at the other derivation of the GPU "
            f"figure, {time.alternative.origin} (assumptions): plan for the range"
        )
    lines = [f"  throughput     {compute}"]
    if time.measured is not None:
        lines = [
            f"  throughput     {time.measured.images_per_second:,.1f} img/s {time.measured.describe()}; the wall "
            "time uses it in place of these figures:",
            f"{CONTINUED}{compute}",
        ]
    if time.smallest_side and time.compute_at_smallest_side != time.compute_images_per_second:
        lines.append(
            f"{CONTINUED}progressive resizing: the network sees {time.smallest_side} px at first, compute "
            f"{time.compute_at_smallest_side:,.0f} img/s there; the whole schedule averages "
            f"{time.average_images_per_second:,.0f} img/s (the slower of compute and loading, epoch by epoch)"
        )
    loader = f"data loader {time.loader_images_per_second:,.0f} img/s ({time.loader_origin})"
    if time.loader_cores > time.loader_measured_cores:
        loader += (
            f"; decoding seldom scales linearly with cores, so read it as a ceiling: the compute would need "
            f"{time.loader_cores_needed:,.1f} cores at the measured pace, the machine gives {time.loader_cores}"
        )
    return [*lines, f"{CONTINUED}{loader}"]


def _other_wall_time(time: TimeEstimate) -> str:
    """The wall time at the other derivation of the GPU figure, or from the published figures when measured."""
    if time.measured is not None and time.modelled_hours is not None:
        return f"; the figures in place of the measured one give {format_hours(time.modelled_hours)}"
    if time.alternative is None or time.alternative_expected_hours is None:
        return ""
    return (
        f"; at the other derivation's {time.alternative.compute_images_per_second:,.0f} img/s: "
        f"{format_hours(time.alternative.total_hours)}, expect {hours_range(*time.alternative_expected_hours)}"
    )


def hours_range(low: float, high: float) -> str:
    """A wall-time range as the plan prints it: minutes under an hour, else hours."""
    if high < 1:
        return f"{low * 60:.0f}-{high * 60:.0f} min"
    return f"{low:.1f}-{high:.1f} h"


def expected_time(time: TimeEstimate) -> str:
    """The wall-time range a user should expect, as the README and the recipe headers quote it."""
    return hours_range(*time.expected_hours)


def expected_cost(time: TimeEstimate) -> str | None:
    """The cost range to expect on-demand (None without a price; "free" at $0/h)."""
    if time.expected_cost_usd is None:
        return None
    low, high = time.expected_cost_usd
    return "free" if time.usd_per_hour == 0 else f"${low:,.2f}-{high:,.2f}"


def _expected_line(time: TimeEstimate) -> str:
    low, high = time.end_to_end
    if low == high == 1.0:
        return ""
    return (
        f" at the published throughput; expect {expected_time(time)} (NVIDIA's own 90-epoch runs took "
        f"{low:.2f}-{high:.2f}x the time their throughput implies)"
    )


def _cost_line(time: TimeEstimate) -> str:
    if time.usd_per_hour is None:
        return "no price for this hardware (own machine, or not in the price table)"
    if time.usd_per_hour == 0:
        return f"free ({time.price_source})"
    other = ""
    if time.alternative_expected_hours is not None and time.measured is None:
        low, high = (hours * time.usd_per_hour for hours in time.alternative_expected_hours)
        other = f"; ${low:,.2f}-{high:,.2f} at the other derivation's throughput"
    return (
        f"~${time.cost_usd:,.2f} at ${time.usd_per_hour:g}/h, expect {expected_cost(time)} "
        f"({time.price_source}){other}"
    )


def plan_run(
    config: DictConfig,
    recipe_path: str | Path,
    *,
    measure_seconds: float | None = None,
    calibrate_from: str | Path | None = None,
) -> RunPlan:
    """Plan the recipe on its ``hardware`` without training; ``measure_seconds`` bounds the measuring.

    ``calibrate_from`` (a finished run's folder) replaces the published throughput with the one that run
    measured; without it, a finished run in the save folder of the recipe's ``run_name`` does, when it is of the
    same recipe on the same hardware (training.calibration)."""
    seconds = DEFAULT_MEASURE_SECONDS if measure_seconds is None else measure_seconds
    hardware = parse_hardware(config.hardware)
    if hardware is None:
        raise UsageError(
            f"hardware='{config.hardware}' is not a form the planner reads; use {known_forms()}."
        )
    per_device = max(1, config.global_batch_size // hardware.world_size)
    assumptions = [f"hardware: {note}" for note in hardware.notes]
    if calibrate_from is not None:
        measured = measured_throughput(
            calibrate_from, config, recipe_path, hardware, chosen="--calibrate-from"
        )
    else:
        measured, not_used = find_measured_throughput(config, recipe_path, hardware)
        assumptions.append(
            not_used
            or "no finished run of this recipe measured its throughput; once one has, --plan --calibrate-from "
            "RUN_FOLDER plans with what it measured"
        )
    if measured is not None:
        assumptions.append(
            f"training time: the run's images at the throughput {measured.describe()}; the evaluations scaled "
            "by the same factor; start-up and checkpointing not counted"
        )

    facts, data_size, datasets = recipe_facts(config, hardware)
    if data_size.source:
        assumptions.append(f"data sizes: {data_size.source}")
    batches = facts.batches_per_epoch
    total = run_steps_of(config, facts)
    findings = check_recipe(config, facts)
    learning_rates, lr_rule = learning_rate_points(config, batches, total)
    moco = config.moco
    network = measure_network(
        config.model.name, config.model.head, "blurpool" in enabled_algorithms(config.algorithms),
        data_size.num_classes, str(config.task),
        (moco.projector_hidden_dim, moco.predictor_hidden_dim, moco.output_dim)
        if config.task == Task.moco_v3 else None,
    )  # fmt: skip
    memory = estimate_memory(config, hardware, per_device, network)
    time = estimate_time(
        config, hardware, train_images=data_size.train_images, val_images=data_size.val_images,
        num_classes=data_size.num_classes, batches=batches, total=total, datasets=datasets, seconds=seconds,
        assumptions=assumptions, measured=measured,
    )  # fmt: skip
    assumptions += _standing_assumptions(config, hardware, network, time)
    if hardware.device == "gpu" and config.model.name in PREACT_NAMES:
        assumptions.append(_preact_throughput_note(config, network, data_size.num_classes))
    return RunPlan(
        recipe=str(recipe_path),
        description=config.description,
        hardware=hardware,
        global_batch_size=config.global_batch_size,
        per_device_batch_size=per_device,
        device_train_microbatch_size=config.device_train_microbatch_size,
        data=data_size,
        batches_per_epoch=batches,
        total_steps=total,
        max_duration=config.max_duration,
        lr_rule=lr_rule,
        weight_decay=scale_weight_decay(config.optimizer, config.global_batch_size).describe(),
        learning_rates=learning_rates,
        memory=memory,
        time=time,
        findings=findings,
        assumptions=assumptions,
    )


def recipe_facts(config: DictConfig, hardware: Hardware) -> tuple[RecipeFacts, DataSize, Any]:
    """The recipe checks' facts on this hardware, the data's size and (when local) its train and eval sets."""
    data_size, datasets = _data(config)
    per_device = max(1, config.global_batch_size // hardware.world_size)
    batches = batches_per_epoch(
        data_size.train_images,
        hardware.world_size,
        per_device,
        config.data.drop_last,
        config.data.repeated_augmentation,
    )
    if batches < 1:
        raise UsageError(
            f"{data_size.train_images} training images make no batch of {per_device} per device on "
            f"{hardware.world_size} process(es); lower global_batch_size or use more images."
        )
    facts = RecipeFacts(hardware.world_size, hardware.device, data_size.num_classes, batches)
    return facts, data_size, datasets


def batches_per_epoch(
    train_images: int, world_size: int, per_device_batch: int, drop_last: bool, repeats: int = 1
) -> int:
    """Optimizer steps per epoch: each process's share (the loaders' sampler: torch's DistributedSampler, or
    RASampler's under repeated augmentation) in batches of ``per_device_batch``."""
    share = epoch_share(train_images, world_size, drop_last=drop_last, repeats=repeats)
    return share // per_device_batch if drop_last else math.ceil(share / per_device_batch)


def data_is_local(config: DictConfig) -> bool:
    """Whether the recipe's data can be read here without a network: bundled, generated or on a local path."""
    if config.data.source in ("digits", "synthetic"):
        return True
    return config.data.path is not None and Path(str(config.data.path)).expanduser().exists()


def _data(config: DictConfig) -> tuple[DataSize, Any]:
    """The data's size (real when local, else published) and, when local, its train and eval datasets."""
    if data_is_local(config):
        from data import build_data

        bundle = build_data(config)
        size = DataSize(
            bundle.train_size, bundle.val_size, bundle.num_classes, True,
            f"counted from data.source={config.data.source}"
            + (f" at {config.data.path}" if config.data.path else ""),
        )  # fmt: skip
        return size, (bundle.train.dataloader.dataset, bundle.val.dataloader.dataset)
    return published_size(config), None


def tiny_imagenet_published() -> PublishedDataset:
    """Tiny ImageNet's published size, from the numbers ``data.tiny_imagenet`` states."""
    from data import tiny_imagenet

    return PublishedDataset(
        "Tiny ImageNet", tiny_imagenet.NUM_CLASSES * tiny_imagenet.TRAIN_IMAGES_PER_CLASS,
        tiny_imagenet.VAL_IMAGES_PER_CLASS, tiny_imagenet.NUM_CLASSES, tiny_imagenet.TRAIN_IMAGES_PER_CLASS,
        "Le & Yang 2015, Tiny ImageNet Visual Recognition Challenge (CS231N): 200 classes, 500 training and "
        "50 validation images each, 64x64",
    )  # fmt: skip


def published_size(config: DictConfig) -> DataSize:
    """ImageNet-1k's (or, for data.source=tiny_imagenet, Tiny ImageNet's) published size after
    data.subset_size, max_classes, max_samples_per_class and val_subset_size."""
    from data.subsets import parse_subset_size, parse_val_subset_size

    data = config.data
    where = (
        f"data.path={data.path} is not reachable here"
        if data.source != "hf"
        else f"the hub dataset {data.path} is not downloaded to plan"
    )
    if data.source == "hf" and "imagenet" not in str(data.path).lower():
        raise UsageError(
            f"data.path={data.path} is not reachable here and has no published size in the planner; plan "
            "with a local copy (data.path=DIR) or an ImageNet recipe."
        )
    published = tiny_imagenet_published() if data.source == "tiny_imagenet" else IMAGENET_1K
    classes = min(data.max_classes or published.num_classes, published.num_classes)
    cap, total = data.max_samples_per_class, parse_subset_size(data.subset_size)
    guaranteed = classes * min(cap or published.min_train_per_class, published.min_train_per_class)
    if cap is not None and cap <= published.min_train_per_class:
        available, exact = classes * cap, True
    elif classes == published.num_classes and cap is None:
        available, exact = published.train_images, True
    else:
        mean_per_class = published.train_images / published.num_classes
        available, exact = round(classes * min(cap or mean_per_class, mean_per_class)), False
    if total is not None and (total <= guaranteed or (exact and total <= available)):
        train, exact = total, True
    else:
        train = available if total is None else min(total, available)
    val = classes * published.val_images_per_class
    val_total = parse_val_subset_size(data)
    val_cut = val_total is not None and val_total < val
    val = min(val, val_total) if val_total is not None else val
    published_val = published.num_classes * published.val_images_per_class
    # The keys that cut the published dataset down, so a subset is not read as the whole of it.
    cuts = [
        f"data.{key}={value}"
        for key, value, applies in (
            ("max_classes", data.max_classes, classes < published.num_classes),
            ("max_samples_per_class", cap, cap is not None),
            ("subset_size", data.subset_size, total is not None),
            ("val_subset_size", data.val_subset_size, val_cut),
        )
        if applies
    ]
    whole = f"{published.name}'s published size ({published.train_images:,} / {published_val:,})"
    origin = f"a subset by {', '.join(cuts)} of {whole}" if cuts else whole
    origin += "" if exact else ", with its mean images per class"
    origin += f"; {where}"
    return DataSize(train, val, classes, exact, origin, published.source)


def learning_rate_points(config: DictConfig, batches: int, total: int) -> tuple[list[LearningRatePoint], str]:
    """The recipe's schedule evaluated at its start, end of warmup, peak and last step (Composer's schedulers
    and this project's batch-size rule, as train.py builds them)."""
    optimizer, lr_plan = build_optimizer(torch.nn.Linear(1, 1), config.optimizer, config.global_batch_size)
    scheduler = build_scheduler(
        config.scheduler, optimizer, config.max_duration, batches, config.global_batch_size
    )
    warmup = warmup_steps(
        config.scheduler,
        batches_per_epoch=batches,
        global_batch_size=config.global_batch_size,
        total_steps=total,
    )
    warmup_end = min(total - 1, warmup)
    samples = {0, warmup_end, total - 1, *(round(total * index / 400) for index in range(400))}
    rates = {
        step: lr_at(scheduler, lr_plan.lr, step, config, batches) for step in sorted(samples) if step < total
    }
    peak = max(rates, key=lambda step: rates[step])
    points = [
        LearningRatePoint("start", 0, rates[0]),
        LearningRatePoint("end of warmup", warmup_end, rates[warmup_end]),
        LearningRatePoint("peak", peak, rates[peak]),
        LearningRatePoint("end", total - 1, rates[total - 1]),
    ]
    return points, lr_plan.describe()


def lr_at(scheduler: Any, peak_lr: float, step: int, config: DictConfig, batches: int) -> float:
    """The LR of optimizer step ``step`` (0-based), as the Trainer sets it before that step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Composer warns about a zero warmup; torch about calling get_lr
        if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            scheduler.last_epoch = step
            return float(scheduler.get_lr()[0])
        state = SimpleNamespace(
            max_duration=Time.from_timestring(config.max_duration),
            dataloader_len=Time(batches, TimeUnit.BATCH),
            timestamp=Timestamp(
                epoch=step // batches,
                batch=step,
                batch_in_epoch=step % batches,
                sample=step * config.global_batch_size,
            ),
        )
        return peak_lr * float(scheduler(state))


def _preact_throughput_note(config: DictConfig, network: NetworkMeasurement, num_classes: int) -> str:
    """How a timm pre-activation ResNet's training step compares with resnet50's, whose published GPU
    throughput it is planned at (its memory and parameters are measured on its own network)."""
    blurpool = "blurpool" in enabled_algorithms(config.algorithms)
    reference = measure_network("resnet50", "fc", blurpool, num_classes)

    def gigaflops(measured: NetworkMeasurement) -> float:
        return (measured.convolution_flops * (224 / measured.resolution) ** 2 + measured.matmul_flops) / 1e9

    ours, theirs = gigaflops(network), gigaflops(reference)
    return (
        f"model.name={config.model.name} is planned at the GPU figure published for ResNet-50, unscaled: its "
        f"training step measures {ours:.2f} GFLOPs per image at 224 px against resnet50's {theirs:.2f} "
        f"({ours / theirs - 1:+.1%}; torch's FlopCounterMode on this CPU); its parameters and activations are "
        "its own, measured"
    )


# What the measured activations are, per task (tools.measurements.measure_network measures the peak).
HELD_ACTIVATIONS = {
    Task.supervised: "the tensors autograd saves for the backward pass",
    Task.moco_v3: "both views' tensors saved through the base encoder and predictor, plus the momentum "
    "encoder's working set (it runs under no_grad and saves nothing for backward)",
    Task.linear_probe: "the frozen backbone's working set (it saves nothing for backward; fc saves its "
    "input)",
}


def _standing_assumptions(
    config: DictConfig, hardware: Hardware, network: NetworkMeasurement, time: TimeEstimate
) -> list[str]:
    """What every plan assumes, in words."""
    notes = [
        "compute throughput scales with pixel count from its figure's resolution (224 px for the published "
        "GPU figures; optimistic below ~128 px, where GPUs run less efficiently); BlurPool, MixUp, EMA and "
        "other per-step overheads are not modelled",
    ]
    step = TRAINING_STEP_IN_FORWARD_PASSES
    passes, what = training_passes(config.task)
    if passes != step:
        unscaled = "the projector and predictor MLPs" if config.task == Task.moco_v3 else "fc"
        resolutions = sorted({224, config.data.train_resolution})
        shares = ", ".join(
            f"{100 * network.matmul_share_at(side):.2g} % at {side} px" for side in resolutions
        )
        notes.append(
            f"task {config.task}: {what}, {passes} forward-equivalent pass{'es' if passes > 1 else ''} per "
            f"training image, {passes / step:.2f}x a supervised step's compute (the throughput figure is a "
            f"supervised step's, scaled by {step}/{passes}); not counted apart: {unscaled}, whose "
            f"multiply-adds do not scale with pixel count, {shares} of a step's FLOPs (torch's "
            f"FlopCounterMode on the real step at {network.resolution} px)"
        )
    forward = f"a forward pass at {step}x the supervised training throughput"
    not_counted = "start-up, checkpointing and data download are not counted"
    if config.task != Task.moco_v3:
        notes.append(
            f"evaluation: {time.evaluations} evaluations of {time.evaluation_images:,} images, each "
            f"{forward} (a forward pass is about a third of a training step); {not_counted}"
        )
    elif time.evaluations:
        notes.append(
            f"no validation evaluation (task moco_v3 evaluates nothing); the k-NN monitor runs "
            f"{time.evaluations} times (at step 0, every moco.knn_interval={config.moco.knn_interval}, and "
            f"at the end when it falls between), each {forward} over its bank and the validation images "
            f"({time.evaluation_images:,} images); {not_counted}"
        )
    else:
        notes.append(
            f"no evaluation: task moco_v3 evaluates nothing and moco.knn_interval is null; {not_counted}"
        )
    notes.append(
        f"activations: {network.activation_bytes / 1e6:.1f} MB per image at {network.resolution} px, the "
        f"most the training forward pass holds at once: {HELD_ACTIVATIONS[config.task]} (fp32, measured on "
        "this CPU in one training step of the task's model), scaled by pixel count"
    )
    if hardware.device == "gpu":
        notes.append(f"the range to expect: the estimate times the end-to-end factors of {END_TO_END_SOURCE}")
    if hardware.device == "gpu" and config.precision != "fp32":
        notes.append("mixed precision halves the activations (autocast keeps them in 16 bits)")
        if "channels_last" not in enabled_algorithms(config.algorithms):
            notes.append(
                "the published AMP figures use channels-last memory format, which this recipe does not"
            )
    return notes
