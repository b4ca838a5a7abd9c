"""Memory and wall-time estimates for the run planner, from measurements here and the published tables.

Memory per device: the saved activations of one microbatch (measured for the recipe's network, scaled by
pixels and precision) plus weights, gradients, optimizer and algorithm copies, plus a stated CUDA allowance.
Wall time: the run in epoch-long segments, each at the pace of the slower of compute (published GPU
throughput, or training measured on this CPU) and data loading (one worker measured here, times the worker
cores of the target machine), plus the evaluations; cost is hours times the instance's hourly price.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from algorithms.registry import enabled_algorithms, in_steps
from algorithms.resolutions import resolution_schedule
from callbacks.budget_guard import cost_usd
from recipes.durations import steps_in
from recipes.errors import UsageError
from recipes.schema import Task
from tools.measurements import (
    NetworkMeasurement,
    cpu_training_images_per_second,
    images_per_second,
    sample_datasets,
    sample_image_size,
)
from training.budget import recipe_price
from training.calibration import MeasuredThroughput
from training.hardware import (
    END_TO_END_RANGE,
    MULTI_GPU_EFFICIENCY,
    MULTI_GPU_EFFICIENCY_SOURCE,
    GpuType,
    Hardware,
)
from training.preflight import smallest_resized_side

# The loader is timed on one worker in one thread (tools.measurements.images_per_second); a machine's worker
# cores multiply that pace, which assumes decoding scales linearly with cores.
LOADER_MEASURED_CORES = 1
# CUDA context (~0.3-0.5 GiB for PyTorch with lazily loaded kernels) plus cuDNN workspaces and
# caching-allocator fragmentation: an allowance, stated rather than measured.
CUDA_ALLOWANCE_GIB = 1.0
# A training step costs about three forward passes (the backward pass about two), so evaluation runs ~3x
# faster.
TRAINING_STEP_IN_FORWARD_PASSES = 3
GIB = 2**30


def training_passes(task: str) -> tuple[int, str]:
    """Forward-equivalent passes of the network per training image under ``task`` (a supervised step is
    TRAINING_STEP_IN_FORWARD_PASSES), and what they are, in words.

    MoCo v3 (model.MocoV3.forward) takes both views forward and backward through the base encoder and
    forward through the momentum encoder, under no_grad: 2 x 3 + 2 x 1. The linear probe's frozen backbone
    needs only a forward pass; fc's backward on 2048 features per image is negligible.
    """
    step = TRAINING_STEP_IN_FORWARD_PASSES
    if task == Task.moco_v3:
        return 2 * step + 2 * 1, (
            f"both views forward and backward through the base encoder (2 x {step}) and forward through the "
            "momentum encoder (2 x 1)"
        )
    if task == Task.linear_probe:
        return 1, "one forward pass of the frozen backbone (fc's backward is negligible)"
    return step, "one forward and backward pass"


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory per device, in GiB."""

    activations_gib: float
    model_state_gib: float
    allowance_gib: float
    total_gib: float
    device_gib: float | None
    # Images per forward/backward pass on one device, and the side length they are measured at.
    microbatch: int
    resolution: int
    activation_mb_per_image: float
    # Crops per image (2 for MoCo's two views), each held in the activations.
    views: int
    parts: dict[str, float]
    # Largest microbatch that fits (None when there is no GPU memory to compare with).
    largest_fitting_microbatch: int | None
    # device_train_microbatch_size: auto (Composer finds the largest microbatch that fits by trying).
    automatic_microbatch: bool

    @property
    def fits(self) -> bool | None:
        return None if self.device_gib is None else self.total_gib <= self.device_gib


@dataclass(frozen=True)
class AlternativeEstimate:
    """The same plan at a derived GPU figure's other derivation (training.hardware.AlternativeThroughput)."""

    compute_images_per_second: float
    total_hours: float
    origin: str


@dataclass(frozen=True)
class TimeEstimate:
    """Wall time and cost of the whole run."""

    train_hours: float
    eval_hours: float
    compute_images_per_second: float
    compute_origin: str
    loader_images_per_second: float
    loader_origin: str
    loader_cores: int
    # Fraction of the training time in which the data loader, not the GPU (or CPU), sets the pace.
    data_bound_fraction: float
    usd_per_hour: float | None
    price_source: str | None
    # What ``eval_hours`` counts: the validation evaluations, or for MoCo v3 the k-NN monitor's passes; how
    # many run, and the images each passes forward.
    evaluation_label: str = "evaluation"
    evaluations: int = 0
    evaluation_images: int = 0
    # What a whole run takes as multiples of ``total_hours`` (which counts images at the published throughput
    # only): NVIDIA's measured end-to-end runs for GPUs (training.hardware.END_TO_END_RANGE); 1x for CPU recipes,
    # whose throughput is measured here on the recipe's own step.
    end_to_end: tuple[float, float] = (1.0, 1.0)
    # The range the network sees under progressive resizing: its smallest side and the compute rate there
    # (``compute_images_per_second`` is at the full side), and the average over the run's schedule, each segment
    # at the slower of compute and loading.
    smallest_side: int = 0
    compute_at_smallest_side: float = 0.0
    average_images_per_second: float = 0.0
    # Cores the loader is measured on here (one worker, one thread), and the cores at that pace the compute
    # needs at the full side: ``loader_cores`` / ``loader_measured_cores`` is a linear extrapolation.
    loader_measured_cores: int = 1
    loader_cores_needed: float = 0.0
    # A derived GPU figure's other derivation: the same plan at that figure (None for measured figures).
    alternative: AlternativeEstimate | None = None
    # A finished run's measured throughput: when given, ``train_hours`` is the run's images at it, ``eval_hours``
    # scaled by the same factor, and ``modelled_hours`` the total the published figures give.
    measured: MeasuredThroughput | None = None
    modelled_hours: float | None = None

    @property
    def total_hours(self) -> float:
        return self.train_hours + self.eval_hours

    @property
    def cost_usd(self) -> float | None:
        return cost_usd(self.total_hours, self.usd_per_hour)

    @property
    def expected_hours(self) -> tuple[float, float]:
        """The range of wall time to expect: the estimate times the end-to-end factors."""
        low, high = self.end_to_end
        return self.total_hours * low, self.total_hours * high

    @property
    def alternative_expected_hours(self) -> tuple[float, float] | None:
        """The range to expect at the other derivation's GPU figure (None without one)."""
        if self.alternative is None:
            return None
        low, high = self.end_to_end
        return self.alternative.total_hours * low, self.alternative.total_hours * high

    @property
    def expected_cost_usd(self) -> tuple[float, float] | None:
        if self.usd_per_hour is None:
            return None
        low, high = self.expected_hours
        return low * self.usd_per_hour, high * self.usd_per_hour

    @property
    def bottleneck(self) -> str:
        return "data loading" if self.data_bound_fraction > 0.5 else "compute"


def describe_memory(memory: MemoryEstimate, hardware: Hardware) -> str:
    """The memory estimate in one line, with the verdict against the GPU's memory and the fix."""
    parts = ", ".join(f"{name} {gib:.2f}" for name, gib in memory.parts.items())
    line = (
        f"~{memory.total_gib:.1f} GiB = activations {memory.activations_gib:.1f} ({memory.microbatch} images "
        + (f"of {memory.views} views " if memory.views > 1 else "")
        + f"at {memory.resolution} px, {memory.activation_mb_per_image:.1f} MB each) + model state "
        f"{memory.model_state_gib:.2f} ({parts})"
        + (f" + {memory.allowance_gib:g} CUDA allowance" if memory.allowance_gib else "")
    )
    if memory.device_gib is None:
        return line + " (a CPU recipe: no GPU memory to compare with)"
    gpu = hardware.gpu.name if hardware.gpu else "GPU"
    verdict = "fits" if memory.fits else "DOES NOT FIT"
    line += f"; {verdict} in {memory.device_gib:g} GiB ({gpu})"
    if not memory.fits:
        largest = memory.largest_fitting_microbatch or 0
        if not largest:
            line += ": even one image does not fit"
        elif memory.automatic_microbatch:
            line += f"; device_train_microbatch_size=auto will train in microbatches of at most {largest}"
        else:
            line += f": set device_train_microbatch_size to {largest} or less (or 'auto')"
    return line


def estimate_memory(
    config: DictConfig, hardware: Hardware, per_device: int, network: NetworkMeasurement
) -> MemoryEstimate:
    """The activations of one microbatch at the largest training size, plus the weights of every parameter,
    the gradients, optimizer state and algorithm copies of the trained ones, plus the CUDA allowance."""
    microbatch = config.device_train_microbatch_size
    microbatch = microbatch if isinstance(microbatch, int) else per_device
    mixed = config.precision in ("amp_fp16", "amp_bf16") and hardware.device == "gpu"
    per_image = network.activation_bytes_at(config.data.train_resolution) * (0.5 if mixed else 1.0)
    trained = 4 * network.trained_parameters
    untrained = 4 * (network.parameters - network.trained_parameters)
    enabled = enabled_algorithms(config.algorithms)
    # AdamW keeps two moments; LARS always keeps its momentum buffer (moco/optimizer.py), SGD only with momentum.
    # Optimizers only see trained parameters (training.optimization.parameter_groups), Composer's EMA copies
    # only parameters that require grad (composer/algorithms/ema/ema.py:406-408, 0.32.1), and SAM keeps e(w)
    # per gradient.
    optimizer_copies = {"decoupled_adamw": 2, "lars": 1}.get(
        config.optimizer.name, int(config.optimizer.momentum > 0)
    )
    parts = {
        "weights" if not untrained else "trained weights": trained,
        f"{network.untrained_part} weights": untrained,
        "gradients": trained,
        "optimizer": optimizer_copies * trained,
        "EMA copy": trained if "ema" in enabled else 0,
        "SAM copy": trained if "sam" in enabled else 0,
        # Autocast caches the 16-bit copy of a leaf that requires grad for the whole forward pass, and casts
        # any other weight (momentum encoder, frozen backbone) layer by layer (pytorch
        # aten/src/ATen/autocast_mode.cpp, cached_cast's can_try_cache).
        "fp16 weights": trained / 2 if mixed else 0,
    }
    parts_gib = {name: size / GIB for name, size in parts.items() if size}
    model_state = sum(parts_gib.values())
    allowance = CUDA_ALLOWANCE_GIB if hardware.device == "gpu" else 0.0
    activations = per_image * microbatch / GIB
    device_gib = hardware.gpu.memory_gib if hardware.gpu else None
    largest = None
    if device_gib is not None:
        largest = max(0, math.floor((device_gib - model_state - allowance) * GIB / per_image))
    return MemoryEstimate(
        activations_gib=activations,
        model_state_gib=model_state,
        allowance_gib=allowance,
        total_gib=activations + model_state + allowance,
        device_gib=device_gib,
        microbatch=microbatch,
        resolution=config.data.train_resolution,
        activation_mb_per_image=per_image / 1e6,
        views=network.views,
        parts=parts_gib,
        largest_fitting_microbatch=largest,
        automatic_microbatch=config.device_train_microbatch_size == "auto",
    )


def estimate_time(
    config: DictConfig,
    hardware: Hardware,
    *,
    train_images: int,
    val_images: int,
    num_classes: int,
    batches: int,
    total: int,
    datasets: Any,
    seconds: float,
    assumptions: list[str],
    measured: MeasuredThroughput | None = None,
) -> TimeEstimate:
    """Wall time from the slower of compute and data loading, segment by segment, plus the evaluations (or
    the k-NN monitor's passes); compute at the task's forward-equivalent passes per image
    (``training_passes``). With ``measured`` (a finished run of the same recipe on the same hardware), training
    takes its images at the measured rate and the evaluations scale by the same factor."""
    full = config.data.train_resolution
    enabled = enabled_algorithms(config.algorithms)
    smallest = full
    if "data_progressive_resizing" in enabled:
        smallest = smallest_resized_side(
            "data_progressive_resizing", enabled["data_progressive_resizing"], full
        )
    loader = measure_loader(config, datasets, smallest, seconds / (2 if hardware.device == "cpu" else 1))
    cores, core_note = loader_cores(config, hardware)
    assumptions.append(core_note)

    supervised_at, compute_origin = compute_rate(config, hardware, num_classes, seconds / 2, assumptions)
    passes, _ = training_passes(config.task)
    step = TRAINING_STEP_IN_FORWARD_PASSES

    def forward_at(side: int) -> float:
        """Images per second through one forward pass: a supervised step's rate times its passes."""
        return supervised_at(side) * step

    def compute_at(side: int) -> float:
        return forward_at(side) / passes

    if passes != step:
        compute_origin += f", x {step}/{passes} for task {config.task}'s passes per image"
    sam = enabled.get("sam")
    # Composer's SAM takes an extra forward and backward pass every `interval` steps (in training only).
    sam_interval = None if sam is None else in_steps("sam", sam, config.global_batch_size).get("interval", 1)
    sam_factor = 1.0 if sam_interval is None else sam_interval / (sam_interval + 1)
    if sam_interval is not None:
        assumptions.append(f"SAM every {sam_interval} steps: training throughput x {sam_factor:.3f}")
    world = hardware.world_size
    images_per_step = config.global_batch_size
    schedule = resolution_schedule(config, batches, total)
    label, evaluations, images = evaluation_passes(
        config, train_images=train_images, val_images=val_images, batches=batches, total=total
    )

    def seconds_at(scale: float) -> tuple[float, float, float]:
        """Training seconds, those the loader sets the pace of, and evaluation seconds, with compute at
        ``scale`` x its figure."""
        train = data_bound = 0.0
        for steps, network_side, loader_side in schedule:
            compute = compute_at(network_side) * sam_factor * scale
            loading = cores / loader.seconds_per_image(loader_side)
            segment = steps * images_per_step / min(compute, loading)
            train += segment
            data_bound += segment if loading < compute else 0.0
        eval_rate = min(
            forward_at(config.data.eval_resolution) * scale, cores / loader.eval_seconds_per_image
        )
        return train, data_bound, evaluations * images / eval_rate

    train_seconds, data_bound_seconds, eval_seconds = seconds_at(1.0)
    alternative = None
    if (lower := alternative_compute_scale(config, hardware)) is not None:
        scale, origin, source = lower
        assumptions.append(f"{origin}, the same derivation from other measurements [{source}]")
        train, _, evaluation = seconds_at(scale)
        alternative = AlternativeEstimate(
            compute_at(full) * sam_factor * scale, (train + evaluation) / 3600, origin
        )
    modelled_hours = None
    if measured is not None:
        modelled_hours = (train_seconds + eval_seconds) / 3600
        measured_seconds = total * images_per_step / measured.images_per_second
        eval_seconds *= measured_seconds / train_seconds
        train_seconds = measured_seconds
    smallest_side = min(network_side for _, network_side, _ in schedule)
    per_core = 1 / loader.seconds_per_image(full)
    price = recipe_price(config, hardware, read_spot=False)
    return TimeEstimate(
        train_hours=train_seconds / 3600,
        eval_hours=eval_seconds / 3600,
        compute_images_per_second=compute_at(full) * sam_factor,
        compute_origin=f"{compute_origin}, at {full} px" + (f" over {world} GPUs" if world > 1 else ""),
        loader_images_per_second=cores * per_core,
        loader_origin=f"{loader.origin}, {per_core:,.0f} img/s per core here at {full} px x {cores} worker "
        "core(s)"
        + (f", extrapolated linearly from {LOADER_MEASURED_CORES} core measured" if cores > 1 else ""),
        loader_cores=cores,
        data_bound_fraction=data_bound_seconds / train_seconds if train_seconds else 0.0,
        usd_per_hour=price.usd_per_hour,
        price_source=price.source,
        evaluation_label=label,
        evaluations=evaluations,
        evaluation_images=images,
        # A measured rate already holds what NVIDIA's end-to-end factors add to a benchmark's, evaluation apart.
        end_to_end=END_TO_END_RANGE if hardware.device == "gpu" and measured is None else (1.0, 1.0),
        smallest_side=smallest_side,
        compute_at_smallest_side=compute_at(smallest_side) * sam_factor,
        average_images_per_second=total * images_per_step / train_seconds if train_seconds else 0.0,
        loader_measured_cores=LOADER_MEASURED_CORES,
        loader_cores_needed=compute_at(full) * sam_factor / per_core,
        alternative=alternative,
        measured=measured,
        modelled_hours=modelled_hours,
    )


def runs_amp(precision: str, gpu: GpuType) -> bool:
    """Whether the recipe's precision trains at the GPU's AMP figure: amp_fp16, or amp_bf16 on bf16 tensor cores."""
    return precision == "amp_fp16" or (precision == "amp_bf16" and gpu.has_bf16_tensor_cores)


def alternative_compute_scale(config: DictConfig, hardware: Hardware) -> tuple[float, str, str] | None:
    """For a GPU whose figure is derived two ways (training.hardware.AlternativeThroughput), the other
    derivation's figure as a fraction of the one planned with, the figure and its source; None when there is
    one figure."""
    gpu = hardware.gpu
    if gpu is None or gpu.alternative is None:
        return None
    use_amp = runs_amp(config.precision, gpu)
    planned = gpu.amp_images_per_second if use_amp else gpu.fp32_images_per_second
    other = gpu.alternative.amp_images_per_second if use_amp else gpu.alternative.fp32_images_per_second
    if round(other) == round(planned):
        return None
    precision = "AMP" if use_amp else "fp32"
    return other / planned, f"{gpu.name} {precision} {other:g} img/s at 224 px", gpu.alternative.source


def evaluation_passes(
    config: DictConfig, *, train_images: int, val_images: int, batches: int, total: int
) -> tuple[str, int, int]:
    """The forward passes beside training: (what they are, how many times they run, images each time).

    Supervised runs and the linear probe evaluate the validation images at ``eval_interval``. MoCo v3
    evaluates nothing; its k-NN monitor (``callbacks.knn_monitor``) runs once at step 0 of a fresh run and
    then at ``moco.knn_interval``, each time one pass over its bank (``moco.knn_train_images`` training
    images, all of them when fewer) and one over the validation images; none with ``moco.knn_interval`` null.
    """
    steps = {
        "batches_per_epoch": batches,
        "global_batch_size": config.global_batch_size,
        "total_steps": total,
    }
    if config.task != Task.moco_v3:
        interval = steps_in(config.eval_interval, "eval_interval", **steps)
        return "evaluation", interval_count(interval, total, "eval_interval"), val_images
    moco = config.moco
    if moco.knn_interval is None:
        return "k-NN monitor", 0, 0
    interval = steps_in(moco.knn_interval, "moco.knn_interval", **steps)
    bank = min(moco.knn_train_images, train_images)
    return "k-NN monitor", 1 + interval_count(interval, total, "moco.knn_interval"), bank + val_images


def interval_count(interval: int, total: int, key: str) -> int:
    """How often an interval of ``interval`` steps fires in a run of ``total``: at every interval, and at the
    end of training when the end falls between intervals, as Composer schedules an evaluation
    (composer/utils/misc.py ``create_interval_scheduler``, 0.32.1)."""
    if interval < 1:
        raise UsageError(
            f"'{key}' comes to {interval} steps, so it never fires; give a positive interval such as '1ep'."
        )
    return total // interval + (1 if total % interval else 0)


@dataclass(frozen=True)
class LoaderMeasurement:
    """One worker's seconds per image at two training sizes (linear in pixels between them), and for eval."""

    small_side: int
    small_seconds: float
    full_side: int
    full_seconds: float
    eval_seconds_per_image: float
    origin: str

    def seconds_per_image(self, side: int) -> float:
        if self.full_side == self.small_side:
            return self.full_seconds
        fraction = (side**2 - self.small_side**2) / (self.full_side**2 - self.small_side**2)
        return self.small_seconds + fraction * (self.full_seconds - self.small_seconds)


def measure_loader(config: DictConfig, datasets: Any, smallest: int, seconds: float) -> LoaderMeasurement:
    """Time the recipe's train transform (at the full and, with data-side resizing, the smallest size) and its
    eval transform, on the real data when reachable, else on generated ImageNet-sized JPEGs."""
    from data.fast_transforms import input_resolution

    def run(train: Any, evaluation: Any, origin: str) -> LoaderMeasurement:
        share = seconds / (3 if smallest != config.data.train_resolution else 2)
        full_seconds = 1 / images_per_second(train, share)
        small_seconds = full_seconds
        resolution = input_resolution(train)
        if smallest != config.data.train_resolution and resolution is not None:
            resolution.set(smallest)
            small_seconds = 1 / images_per_second(train, share)
            resolution.set(config.data.train_resolution)
        eval_seconds = 1 / images_per_second(evaluation, share)
        return LoaderMeasurement(
            smallest, small_seconds, config.data.train_resolution, full_seconds, eval_seconds, origin
        )

    if datasets is not None:
        return run(*datasets, f"measured on the recipe's data ({config.data.source})")
    with sample_datasets(config) as generated:
        width, height = sample_image_size(config)
        return run(
            *generated, f"measured on generated {width}x{height} JPEGs (the real data is not reachable here)"
        )


def loader_cores(config: DictConfig, hardware: Hardware) -> tuple[int, str]:
    """CPU cores decoding for the whole machine: the workers of every process, at most the machine's vCPUs."""
    workers = max(1, config.data.num_workers) * hardware.world_size
    if hardware.vcpus is None:
        return workers, (
            f"data loader: {workers} worker(s) in all, each as fast as one core here (the machine's vCPUs "
            "are unknown)"
        )
    cores = min(workers, hardware.vcpus)
    shared = (
        "on a CPU the workers and the training share these cores, so the slower of the two is optimistic"
        if hardware.device == "cpu"
        else "the training processes need some CPU too, so this is an upper bound"
    )
    return cores, (
        f"data loader: min({workers} workers, {hardware.vcpus} vCPUs) = {cores} core(s), each as fast as one "
        f"core of this machine; {shared}"
    )


def compute_rate(
    config: DictConfig, hardware: Hardware, num_classes: int, seconds: float, assumptions: list[str]
) -> tuple[Any, str]:
    """Images per second of a supervised training step at a side length, for the whole machine, and where the
    figure is from (``estimate_time`` scales it by the task's passes)."""
    if hardware.gpu is None:
        per_core = cpu_training_images_per_second(config, num_classes, seconds)
        cores = hardware.vcpus or torch.get_num_threads()
        assumptions.append(
            f"CPU training: {per_core:.1f} img/s on one core here (a supervised step of the recipe's "
            f"ResNet), x {cores} cores (linear scaling)"
        )
        base_side = config.data.train_resolution
        return (
            lambda side: per_core * cores * (base_side / side) ** 2,
            f"measured here: {per_core:.1f} img/s per core in a supervised step of the recipe's ResNet, x "
            f"{cores} cores",
        )
    gpu = hardware.gpu
    use_amp = runs_amp(config.precision, gpu)
    if config.precision == "amp_bf16" and not gpu.has_bf16_tensor_cores:
        assumptions.append(f"amp_bf16 on {gpu.name}: no bf16 tensor cores, planned at the fp32 figure")
    per_gpu = gpu.amp_images_per_second if use_amp else gpu.fp32_images_per_second
    world = hardware.world_size
    efficiency = MULTI_GPU_EFFICIENCY if world > 1 else 1.0
    if world > 1:
        assumptions.append(f"multi-GPU scaling efficiency {efficiency:.2f} [{MULTI_GPU_EFFICIENCY_SOURCE}]")
    precision = "AMP" if use_amp else "fp32"
    assumptions.append(f"{gpu.name} {precision} {per_gpu:g} img/s at 224 px ({gpu.kind}) [{gpu.source}]")
    return (
        lambda side: per_gpu * world * efficiency * (224 / side) ** 2,
        f"{gpu.name} {precision} {per_gpu:g} img/s per GPU at 224 px ({gpu.kind}), scaled",
    )
